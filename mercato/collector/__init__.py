"""The collector: the HTTP endpoint producers send events to; it answers once they are durable."""
