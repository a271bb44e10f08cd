"""spineprint: spinal cord fMRI fingerprinting ("spine-prints").

One module per pipeline stage, mirrored by one notebook and one book chapter:

- :mod:`spineprint_utils.datasets`     real data loaders (OpenNeuro, PAM50) with local override
- :mod:`spineprint_utils.simulate`     the embedded synthetic BIDS study with a planted spine-print
- :mod:`spineprint_utils.acquisition`  protocol tables read from BIDS metadata (chapter 1)
- :mod:`spineprint_utils.motion`, :mod:`~spineprint_utils.physio`, :mod:`~spineprint_utils.denoise`,
  :mod:`spineprint_utils.preprocess`   preprocessing (chapter 2)
- :mod:`spineprint_utils.atlas`, :mod:`spineprint_utils.connectivity`  regions and FC (chapter 3)
- :mod:`spineprint_utils.fingerprint`  identification, Idiff, PCA, ICC (chapter 4)
- :mod:`spineprint_utils.drivers`      what drives a spine-print: parameter sweeps (chapter 5)
- :mod:`spineprint_utils.clinical`     focal lesion model for the clinical chapter (chapter 6)
- :mod:`spineprint_utils.registration`, :mod:`spineprint_utils.distortion`  native-space data
- :mod:`spineprint_utils.build`, :mod:`spineprint_utils.cli`  the book build and the command line
"""

import warnings as _warnings

__version__ = "0.1.0"

# Progress bars are plain text (no Jupyter widgets in a static book): silence tqdm's
# "IProgress not found" hint when tqdm.auto is imported inside a notebook kernel.
_warnings.filterwarnings("ignore", message="IProgress not found")
