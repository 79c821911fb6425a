"""core: leaf pieces every stage may use (table contract, file names as text, tags
from names, optional extras, the writer lock); they import no other wpipe module."""
