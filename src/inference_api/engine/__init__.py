"""The generation engine: a bounded queue in front of one worker per device. It knows nothing of HTTP."""
