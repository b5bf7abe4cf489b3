"""Model families. Importing this package registers every family with ``AutoModel``."""

from diffulex.models import llada2  # noqa: F401
