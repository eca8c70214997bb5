"""The control plane: REST API, scheduler loop, node health loop, the store's only writer."""
