"""How the outside world reaches buildref: one operations table, served on the query socket (and
later over HTTP), and the hook socket's line protocol."""
