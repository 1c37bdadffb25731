"""HTTP plumbing shared by every feature: the error envelope, request ids, dependency accessors."""
