"""Report shaping over warehouse rows: shared-cost allocation, tables (pandas) and exports
(CSV, Parquet, FOCUS 1.2). Pure functions over plain rows; the routes do the I/O."""
