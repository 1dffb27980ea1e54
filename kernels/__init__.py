"""Backend implementations, one module per backend; each imports only ``backend.base``
(and the module it extends) and overrides only the operations it makes faster."""
