"""The store: where received instances and results live on disk (`storage`), how they
are acknowledged and indexed (`ingest`), the index itself (`repository`, the only
module that speaks SQL, over the tables in `schema`), start-up `recovery`, and
`retention`. Other packages see the records in `records`, never ORM rows."""
