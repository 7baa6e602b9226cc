"""proxyscale: plan large training runs from small GPT proxies."""
