import { api, content, el, showError, storeKey } from "./common.js";

function render() {
  document.querySelector("nav").hidden = true;
  const input = el("input", {
    id: "api-key", type: "password", name: "key", autocomplete: "off", required: true, placeholder: "alk_...",
  });
  const form = el(
    "form",
    { class: "card login", id: "login-form" },
    el("label", { for: "api-key" }, "API key"),
    input,
    el("p", { class: "hint" }, "Kept in this tab only (sessionStorage) and sent as Authorization: Bearer to the API."),
    el("button", { type: "submit", class: "primary" }, "Log in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    const key = input.value.trim();
    try {
      await api("/v1/keys/me", null, { key });
    } catch (error) {
      showError(error.status === 401 ? "This key is unknown or revoked." : error);
      return;
    }
    storeKey(key);
    window.location.assign("/dashboard/overview");
  });
  content().replaceChildren(form);
  document.body.dataset.ready = "yes";
  input.focus();
}

render();
