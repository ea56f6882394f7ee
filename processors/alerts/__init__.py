"""Alert dispatcher: delivers `alerts` to the configured webhooks, at most once per destination.

`destinations` decides which URLs and addresses may be contacted (and pins the address it
checked), `formats` renders an alert for a destination, `retry` is the pure retry policy,
`deliveries` keeps the durable record of attempts, `dispatcher` runs the Kafka loop.
"""
