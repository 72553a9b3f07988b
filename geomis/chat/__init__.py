"""Chat data (texts) and its tokens: records, bundled sets, public-set loaders, chat templates and masks."""
