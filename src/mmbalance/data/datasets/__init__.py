"""One module per dataset; what each must provide is in `mmbalance.data.registry`."""
