"""review: the review dashboard, a web page over a dataset and its daemon (the page's service)."""
