"""The fault-injection suite: killed processes, outages, hostile and malformed files, two syncs
at once, against the real local services. Each test asserts what a person would check: where
the file is, how many runs, what the message says, what is left on disk."""
