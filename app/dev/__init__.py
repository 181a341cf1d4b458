"""Development helpers: the local mail catcher and the `make run` launcher."""
