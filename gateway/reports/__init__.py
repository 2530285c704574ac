"""Reports over the ledger: what each tenant, day, model, route, feature and template costs."""
