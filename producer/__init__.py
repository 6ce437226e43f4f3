"""slipstream producers: processes that bridge sources into broker topics."""
