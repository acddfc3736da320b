"""Tools around the service: the command line, the demo, export, an embedded broker and typed clients."""
