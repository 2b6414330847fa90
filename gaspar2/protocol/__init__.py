"""What the producer and its workers agree on: the wire formats, the progress slots in
shared memory, the shared arena for large bodies, and CURVE keys. Imported by every
process; imports nothing else of gaspar2."""
