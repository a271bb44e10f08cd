"""Transforms in the formats ANTs, ITK and the Spinal Cord Toolbox read and write.

A spineprint transform chain (:mod:`spineprint_utils.registration`: a list of
``AffineTransform``/``DisplacementField`` point maps in RAS world mm, applied in order to the
points of the output grid) is written as

- an **ITK displacement field** NIfTI (``.nii.gz``): 5D ``(X, Y, Z, 1, 3)`` float32, NIfTI
  intent ``vector`` (1007), displacement vectors in LPS mm at each voxel of the output grid,
  as ``antsRegistration``/``antsApplyTransforms`` and SCT (``warp_template2anat.nii.gz``,
  ``warp_anat2template.nii.gz``) use; the chain is composed into one field on the grid
  (exact at the voxel centres);
- an **ITK affine** (``.txt``: "#Insight Transform File V1.0", ``AffineTransform_double_3_3``;
  ``.mat``: the same parameters as ANTs' MATLAB file) for a chain of one affine,

named ``<source>_from-<X>_to-<Y>_mode-image_xfm.<ext>`` (BIDS: the transform that resamples an
image from space X into space Y; it maps points of Y's grid to points of X). ITK's point
convention is the same as spineprint's (the transform maps output-grid points to input
points), only in LPS instead of RAS: ``M_lps = F M_ras F`` with ``F = diag(-1, -1, 1)``, and
displacement vectors have their x and y negated. :func:`load_itk` reads these files and SCT's
warps back into spineprint transforms. The round trip is checked against the independent
reader ``nitransforms`` (Goncalves et al., NiPreps) in the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import SpineprintError

__all__ = ["chain_to_field", "find_given_anat_warp", "find_given_epi_warp", "load_itk", "save_itk", "xfm_name"]

_F = np.diag([-1.0, -1.0, 1.0, 1.0])


def xfm_name(source_stem: str, frm: str, to: str, ext: str = ".nii.gz") -> str:
    """BIDS transform file name ``<source_stem>_from-<frm>_to-<to>_mode-image_xfm<ext>``."""
    return f"{source_stem}_from-{frm}_to-{to}_mode-image_xfm{ext}"


def chain_to_field(chain, shape, affine):
    """Compose a transform chain into one :class:`~spineprint_utils.registration.DisplacementField`
    on the grid ``(shape, affine)``: ``u(p) = chain(p) - p`` at every voxel centre ``p``."""
    from .registration import DisplacementField, _grid_points

    shape = tuple(int(s) for s in shape[:3])
    aff = np.asarray(affine, dtype=np.float64)
    pts = _grid_points(shape, aff)
    out = pts.copy()
    for t in chain:
        out = t.map_points(out)
    return DisplacementField((out - pts).reshape(shape + (3,)).astype(np.float32), aff)


def save_itk(chain, path, reference=None):
    """Write a chain as an ITK/ANTs file (atomic).

    Parameters
    ----------
    chain : list of AffineTransform / DisplacementField
    path : path-like
        ``.nii.gz``/``.nii`` (displacement field on *reference*), ``.txt`` or ``.mat`` (one affine).
    reference : nibabel image or (shape, affine), optional
        Output grid of the field (default: the grid of the chain's only DisplacementField).

    Returns
    -------
    Path
    """
    import nibabel as nib

    from ._io import atomic_save_nifti, atomic_write, atomic_write_text
    from .registration import AffineTransform, DisplacementField

    path = Path(path)
    name = path.name
    if name.endswith((".txt", ".mat")):
        if len(chain) != 1 or not isinstance(chain[0], AffineTransform):
            raise SpineprintError(f"{path}: an ITK affine file holds one affine transform, got {len(chain)} transforms")
        m = _F @ np.asarray(chain[0].matrix, dtype=np.float64) @ _F
        params = np.concatenate([m[:3, :3].ravel(), m[:3, 3]])
        if name.endswith(".txt"):
            txt = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                   f"Parameters: {' '.join(repr(float(v)) for v in params)}\nFixedParameters: 0 0 0\n")
            return atomic_write_text(path, txt)
        import io

        from scipy.io import savemat

        buf = io.BytesIO()
        savemat(buf, {"AffineTransform_double_3_3": params.reshape(12, 1), "fixed": np.zeros((3, 1))},
                format="4")
        with atomic_write(path, "wb") as fh:
            fh.write(buf.getvalue())
        return path
    if not name.endswith((".nii.gz", ".nii")):
        raise SpineprintError(f"{path}: transform files end in .nii.gz (displacement field), .txt or .mat (affine)")
    if reference is None:
        fields = [t for t in chain if isinstance(t, DisplacementField)]
        if len(fields) != 1:
            raise SpineprintError(f"{path}: give the reference grid of the displacement field")
        shape, aff = fields[0].field.shape[:3], fields[0].affine
    elif isinstance(reference, tuple):
        shape, aff = reference[0][:3], reference[1]
    else:
        shape, aff = reference.shape[:3], reference.affine
    f = chain_to_field(chain, shape, aff)
    vec = (f.field * np.array([-1.0, -1.0, 1.0], np.float32))[:, :, :, None, :]  # RAS -> LPS
    img = nib.Nifti1Image(vec.astype(np.float32), np.asarray(aff, dtype=np.float64))
    img.header.set_intent("vector", (), "")
    img.header.set_xyzt_units("mm")
    return atomic_save_nifti(img, path)


def load_itk(path) -> list:
    """Read an ITK/ANTs transform file (ours or another tool's, e.g. SCT's ``warp_template2anat.nii.gz``)
    into a spineprint chain (one transform).

    ``.nii``/``.nii.gz``: a displacement field (5D ``(X, Y, Z, 1, 3)`` or 4D ``(X, Y, Z, 3)``,
    LPS vectors); ``.txt``/``.mat``: an ITK affine (``AffineTransform``/``MatrixOffsetTransformBase``,
    with its centre)."""
    import nibabel as nib

    from .registration import AffineTransform, DisplacementField

    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: transform file not found")
    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        from ._io import verify_nifti

        verify_nifti(path)  # gzip CRC: a damaged field is an error, never a wrong warp
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise SpineprintError(f"{path}: cannot read the displacement field ({exc})") from None
        if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
            data = data[:, :, :, 0, :]
        if data.ndim != 4 or data.shape[3] != 3:
            raise SpineprintError(f"{path}: not an ITK displacement field (shape {data.shape}, expected X x Y x Z x 1 x 3)")
        if not np.all(np.isfinite(data)):
            raise SpineprintError(f"{path}: displacement field has non-finite values")
        return [DisplacementField(data * np.array([-1.0, -1.0, 1.0], np.float32), np.asarray(img.affine, np.float64))]
    if name.endswith(".txt"):
        params = fixed = None
        for line in path.read_text().splitlines():
            if line.startswith("Parameters:"):
                params = np.array(line.split(":", 1)[1].split(), dtype=float)
            elif line.startswith("FixedParameters:"):
                fixed = np.array(line.split(":", 1)[1].split(), dtype=float)
            elif line.startswith("Transform:") and not any(k in line for k in ("Affine", "MatrixOffset", "Rigid",
                                                                               "Euler3D", "Similarity")):
                raise SpineprintError(f"{path}: unsupported ITK transform type ({line.strip()})")
    elif name.endswith(".mat"):
        from scipy.io import loadmat

        try:
            m = loadmat(str(path))
        except Exception as exc:  # noqa: BLE001
            raise SpineprintError(f"{path}: cannot read the ITK .mat file ({exc})") from None
        key = next((k for k in m if k.startswith(("AffineTransform", "MatrixOffset"))), None)
        params = np.asarray(m[key], float).ravel() if key else None
        fixed = np.asarray(m.get("fixed", np.zeros(3)), float).ravel()
    else:
        raise SpineprintError(f"{path}: unknown transform file type")
    if params is None or params.size != 12:
        raise SpineprintError(f"{path}: expected 12 affine parameters")
    fixed = np.zeros(3) if fixed is None or fixed.size != 3 else fixed
    A, t = params[:9].reshape(3, 3), params[9:]
    m = np.eye(4)
    m[:3, :3] = A
    m[:3, 3] = t + fixed - A @ fixed  # ITK: T(x) = A (x - c) + t + c
    return [AffineTransform(_F @ m @ _F)]


def _deriv_hits(root, sub, folder, names):
    from .layout import derivative_files  # the dataset index (hidden files, .bidsignore skipped)

    hits = derivative_files(root, sub, names, datatype=folder)
    return hits[0] if hits else None


def find_given_anat_warp(t2w, root, sub):
    """A template -> T2w warp the user already has (SCT's ``sct_register_to_template`` output), or None.

    Looked for in ``derivatives/<pipeline>/sub-<sub>/**/anat/``: ``<T2w>_from-PAM50_to-T2w_mode-image_xfm.nii.gz``
    (BIDS) or SCT's ``warp_template2anat.nii.gz`` (an ITK displacement field on the T2w grid mapping
    T2w points to PAM50 points: it brings the template into the T2w)."""
    stem = Path(t2w).name.split(".nii")[0]
    return _deriv_hits(root, sub, "anat", (f"{stem}_from-PAM50_to-T2w_mode-image_xfm.nii*",
                                           f"{stem}_from-template_to-T2w_mode-image_xfm.nii*",
                                           "warp_template2anat.nii*"))


def find_given_epi_warp(bold_path, root, sub):
    """A template -> EPI warp of the run the user already has, or None:
    ``derivatives/<pipeline>/sub-<sub>/**/func/<run>_from-PAM50_to-bold_mode-image_xfm.nii.gz`` (BIDS;
    an ITK displacement field on the run's grid, mapping run points to PAM50 points)."""
    prefix = Path(bold_path).name.split("_bold.nii")[0]
    return _deriv_hits(root, sub, "func", (f"{prefix}_from-PAM50_to-bold_mode-image_xfm.nii*",
                                           f"{prefix}_from-template_to-bold_mode-image_xfm.nii*"))
