"""`make bench`: throughput, latency and memory figures of emailsvc on this machine.

Nothing here is imported by the service or its tests. Modules that run in
helper processes (loadgen, smtpsink, payload) import no Django.
"""
