"""What a Kafka client's transactional producer raises to the loop: a transaction to abort, or no going on."""


class AbortError(Exception):
    """The transaction cannot commit (a send failed, the group rebalanced, no answer in time): abort it."""


class FatalError(Exception):
    """The client cannot go on: another instance took the transactional id (fenced), or the producer failed
    for good. The app stops with a non-zero exit, and its platform starts it again."""
