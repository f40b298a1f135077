import os
import sys

# `python -m lpa_cli` puts the working directory first on sys.path, and lpa imports torch, h5py and the
# rest lazily, so a file named like one of them in a data folder would be imported instead. Unless lpa
# itself runs from that folder (a source checkout), it leaves the path; it joins again only for a model
# factory the user names (lpa_cli.models.factory).
_here = os.getcwd()
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here and os.path.dirname(os.path.dirname(os.path.abspath(__file__))) != _here:
    del sys.path[0]

from lpa_cli.app import main  # noqa: E402

main()
