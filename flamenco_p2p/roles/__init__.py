"""The three roles a node can play: worker, manager of its site, server of the farm."""
