"""From hook event to index: the durable inbox, the spool, and the indexer."""
