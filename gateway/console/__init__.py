"""The console: the admin API, the status snapshot, and the page's assets."""
