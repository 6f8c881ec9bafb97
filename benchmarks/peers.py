"""The adapters of peakknn and its peers now live in the package (peakknn.peers, also used by
`peakknn bench --partitioned`); this module re-exports them for scripts that `import peers`."""

from peakknn.peers import *  # noqa: F403
from peakknn.peers import __all__  # noqa: F401
