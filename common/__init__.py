"""The bottom layer every firegrid package may import: identifiers, the config base model, YAML loading, the SQLite
schema and its migrations, webhook signing. It imports nothing of firegrid's own."""
