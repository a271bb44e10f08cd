"""Add (or refresh) the course cells of every chapter notebook.

Touches only its own cells, recognised by their cell ids (``course-*``), so that
the rest of each notebook is left as it is:

* ``course-header`` (Markdown, after the title cell): objectives, prerequisites,
  reading time and measured rerun times (glued by ``course-facts``);
* ``course-setup`` (code, hidden, after the ``parameters`` cell): the book's
  matplotlib style;
* ``course-exercises`` ... (at the end): a complete-the-code exercise (a blank
  checked by an assert) and an interpret-a-figure exercise, with hidden solutions;
* ``course-facts`` (code, hidden, last cell): glues the measured times.

Usage: ``python tools/course_cells.py`` (from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

SETUP = (
    "from spineprint_utils import course, plotting, prose\n\n"
    "plotting.use_book_style()\n"
    "course.reader_warnings()  # warnings without the path of the machine that built the page"
)

HEADER = """:::{{admonition}} Chapter {number} at a glance
:class: chapter-facts

**You will learn to**

{objectives}

**Before you start**: {prerequisites}

**Reading time**: {{glue:text}}`chapter_reading_time`.
**Rerun time** (every cell of this page, in the build that made it, at the parameters
shown below): {{glue:text}}`chapter_rerun_time`; at the default parameters:
{{glue:text}}`chapter_default_rerun`.
:::"""

INTRO = """### Complete the code, read a figure

The exercises above change parameters: write down what you *predict* before you rerun.
The two below ask you to complete a small function of this chapter's stage (replace the
`...` blank; the `assert` in the cell checks your answer against the package) and to read
one of the chapter's figures."""

CHAPTERS = {
    "00_simulated_study": dict(
        number=1,
        objectives="""- describe the layout of a BIDS study of resting-state spinal cord fMRI with physiological recordings;
- name the three parts of the planted connectivity (group pattern, participant deviation, session deviation) and say which one is the spine-print;
- compute the temporal SNR of a voxel time course.""",
        prerequisites="basic Python and NumPy; what an fMRI run and a correlation are. No earlier chapter.",
        code_title="temporal SNR",
        code="""# Complete the blank (...): temporal SNR = temporal mean / temporal standard deviation
# (the sample SD, ddof=1, as SCT computes it), one value per voxel (time is the last
# axis). The assert checks it against the package.
import numpy as np

from spineprint_utils import preprocess

rng = np.random.default_rng(0)
data = rng.normal(100.0, 5.0, size=(3, 4, 200))  # (x, y, time), tSNR about 20

my_tsnr = ...  # blank

if my_tsnr is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    expected = preprocess.tsnr(data)
    assert np.allclose(my_tsnr, expected), "Not yet: mean over time / SD over time"
    print("Correct.")""",
        solution="my_tsnr = data.mean(axis=-1) / data.std(axis=-1, ddof=1)",
        wrong="my_tsnr = data.std(axis=-1) / data.mean(axis=-1)",
        figure_q="""Look at the three matrices of **The planted spine-print** (group pattern, planted matrix of
one participant and session, connectivity of the ground-truth time series). Why do the
strongest values form small blocks along the diagonal, and why is the third matrix noisier
than the second?""",
        figure_a="""Regions are ordered segment by segment, four horns per segment: the blocks are the
couplings inside a segment (strongest between the dorsal and ventral horn of the same side,
then between the left and right ventral and the left and right dorsal horns), and coupling
decays with the distance between segments away from the diagonal. The third matrix is
*estimated* from a finite run of the planted time series (filtered by the haemodynamic
response), so it carries sampling noise that the planted correlation matrix does not.""",
    ),
    "01_acquisition": dict(
        number=2,
        objectives="""- read an acquisition protocol from BIDS sidecars (repetition time, slices, multiband, phase encoding, physiological recordings);
- explain why spinal cord protocols use thick axial slices, z-shimming, reverse phase-encoding fieldmaps and physiological recordings;
- infer the multiband factor from `SliceTiming` when the sidecar does not state it.""",
        prerequisites="chapter 1 (the simulated study). Knowing what TR, TE and an EPI slice are helps.",
        code_title="multiband factor from slice timing",
        code="""# Complete the blank (...): the multiband factor is the number of slices excited at the
# same time = number of slices / number of distinct acquisition times.
import numpy as np

from spineprint_utils import acquisition, simulate

# acquisition time (s) of each of 12 slices, TR 2 s
slice_timing = simulate.slice_timing(12, 2.0, "interleaved", multiband=2)

my_multiband = ...  # blank

if my_multiband is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    expected = acquisition.slice_timing_info(slice_timing, 2.0)["multiband"]
    assert my_multiband == expected, "Not yet: count the distinct times with np.unique"
    print("Correct.")""",
        solution="my_multiband = len(slice_timing) // len(np.unique(slice_timing))",
        wrong="my_multiband = len(np.unique(slice_timing))",
        figure_title="Read the figure, then predict",
        figure_q="""In the slice-timing figure, the panel of the simulated default study has one dot per
acquisition time (no multiband). Set `study_params = {"multiband": 2}` in the parameters cell.
*Before* rerunning, predict how that panel and the table rows "Multiband factor" and "Time
between excitations" will change; then rerun the chapter and check.""",
        figure_a="""Each acquisition time now carries two slices, half the volume apart (joined by a grey line,
two band colours), so there are half as many distinct times; for the same TR the time between
excitations doubles, and the multiband factor, inferred from `SliceTiming` exactly as for
CoSpine, reads 2. The simulator also writes `MultibandAccelerationFactor` into its sidecars, so
this time the inferred and the stated factor can be compared.""",
    ),
    "02_preprocessing": dict(
        number=3,
        objectives="""- run slice-wise motion correction and read its quality measures (translations, framewise displacement);
- build a RETROICOR physiological noise model from cardiac and respiratory recordings at each slice's acquisition time;
- judge what each nuisance model removes (variance removed, tSNR before and after) and what it costs in degrees of freedom.""",
        prerequisites="chapters 1 and 2; linear regression (design matrix, residuals) and the idea of band-pass filtering.",
        code_title="framewise displacement",
        code="""# Complete the blank (...): framewise displacement (Power et al. 2012) of slice-averaged
# in-plane translations: FD_t = |dx_t - dx_(t-1)| + |dy_t - dy_(t-1)|, FD_0 = 0.
import numpy as np

from spineprint_utils import motion

rng = np.random.default_rng(1)
# translations in mm, shape (slices, volumes, x/y)
shifts = np.cumsum(rng.normal(0, 0.05, size=(8, 50, 2)), axis=1)
mean = shifts.mean(axis=0)  # (volumes, 2): translation averaged over slices

my_fd_rest = ...  # blank: FD of volumes 1, 2, ..., T-1 (FD_0 = 0 is added below)

if my_fd_rest is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    my_fd = np.concatenate([[0.0], my_fd_rest])
    expected = motion.framewise_displacement(shifts)
    assert np.allclose(my_fd, expected), "Not yet: sum of |differences|"
    print("Correct.")""",
        solution="my_fd_rest = np.abs(np.diff(mean, axis=0)).sum(axis=1)",
        wrong="my_fd_rest = np.diff(mean, axis=0).sum(axis=1)",
        figure_q="""In the motion figure of **Slice-wise motion correction**, each line is one slice and its
colour gives the slice index (colour bar). What would tell you that slices moved
*differently* from each other, and why does that matter for the choice of a slice-wise
correction?""",
        figure_a="""If all slices moved together the lines of all colours would lie on top of each other;
a fan of lines whose order follows the colour bar (e.g. caudal slices moving more than rostral
ones, as breathing does) shows slice-specific motion. A single rigid-body correction per
volume cannot undo it, which is why the pipeline estimates one in-plane translation per slice
and regularises them along the cord.""",
    ),
    "03_connectivity": dict(
        number=4,
        objectives="""- define gray-matter horn regions per spinal segment on the PAM50 template and extract their time series;
- compute a functional connectome (Pearson correlation, Fisher z) for a whole run and for its halves;
- describe the organisation of spinal connectivity (ventral-ventral and dorsal-dorsal coupling, decay along the cord).""",
        prerequisites="chapter 3 (preprocessed runs); correlation and the Fisher z transform.",
        code_title="Fisher-z connectome",
        code="""# Complete the blank (...): the Fisher-z connectome of region time series (T, R) is
# arctanh of the Pearson correlation matrix, with its diagonal set to 0.
import numpy as np

from spineprint_utils import connectivity

rng = np.random.default_rng(2)
ts = rng.normal(size=(120, 6)) + rng.normal(size=(120, 1))  # 6 regions sharing a signal

r = np.corrcoef(ts, rowvar=False)
np.fill_diagonal(r, 0.0)  # arctanh(1) is infinite: the diagonal is set to 0
my_z = ...  # blank

if my_z is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    expected = connectivity.connectivity_matrix(ts, fisher_z=True)
    assert np.allclose(my_z, expected), "Not yet: apply the inverse hyperbolic tangent"
    print("Correct.")""",
        solution="my_z = np.arctanh(r)",
        wrong="my_z = np.tanh(r)",
        figure_q="""In the group-average connectivity matrix of **Group-average connectivity and its
organisation**, which pairs of horns couple most strongly inside a segment, and how does
coupling change as you move away from the diagonal? Relate what you see to the bar chart of
the coupling summary below it.""",
        figure_a="""In the default study the planted pattern puts the strongest coupling inside each
segment's 4 x 4 block between the dorsal and ventral horn of the same side, then between the
left and right ventral and the left and right dorsal horns, and the weakest between dorsal and
ventral horns of opposite sides; after noise and preprocessing close values can swap places.
Away from the diagonal (other segments) values fall off with the distance between segments.
The coupling summary averages exactly these groups of edges, so its bars rank the same pairs.""",
    ),
    "04_fingerprinting": dict(
        number=5,
        objectives="""- compute an identifiability matrix between two sets of connectomes and read it;
- compute the identification rate, Iself, Iothers and Idiff, with permutation p-values and bootstrap intervals;
- compare within-session and between-session designs, and find the reliable edges (edgewise ICC).""",
        prerequisites="chapter 4 (connectomes of whole runs and halves); correlation; the idea of a permutation test.",
        code_title="identification rate",
        code="""# Complete the blank (...): identification rate (Finn et al. 2015) = fraction of
# the rows of the identifiability matrix A (test x retest) whose maximum lies on
# the diagonal.
import numpy as np

from spineprint_utils import fingerprint

rng = np.random.default_rng(3)
A = rng.normal(0.3, 0.1, size=(6, 6)) + np.diag([0.3, 0.3, 0.3, -0.2, 0.3, -0.2])

my_rate = ...  # blank

if my_rate is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    expected = fingerprint.identification_rate(A).rate_ab
    assert np.isclose(my_rate, expected), "Not yet: argmax of each row"
    print("Correct: identification", f"{100 * my_rate:.0f} %")""",
        solution="my_rate = np.mean(A.argmax(axis=1) == np.arange(len(A)))",
        wrong="my_rate = np.mean(A.argmax(axis=0) == 0)",
        figure_q="""Look at the two identifiability matrices of **The identifiability matrix** (within and
between sessions). What would a perfect spine-print look like there, and which design comes
closer to it in this build? Check your reading against the identification rates in the
table of the next section.""",
        figure_a="""A perfect spine-print is a diagonal that stands out in every row and column (each
participant most similar to themselves). The design whose diagonal is more clearly brighter
than the rest of its row has the higher identification rate and Idiff in the table; with the
default study the within-session design usually does, because the two halves of a run share
the session's state as well as the participant's fingerprint.""",
    ),
    "04b_real_spineprint": dict(
        number=6,
        objectives="""- run the fingerprinting analysis of chapter 5 on real spinal cord fMRI time series and set it beside the simulated study;
- read a permutation p-value and a bootstrap interval, and check an assumption of the data (the participant order across sessions);
- test whether a result depends on analysis choices (gray matter only or with white matter, task kept or regressed out).""",
        prerequisites="chapter 5 (identification, Idiff, PCA reconstruction, edgewise ICC, permutation tests).",
        predict_q="""Set `regions = "gray matter"` and `regress_task = False` in the parameters cell.
*Before* rerunning, write down whether you expect identification within a session to go up or
down, and why; then rerun the chapter and compare the main results with the table of the last
section.""",
        predict_a="""The main analysis of your rerun is now the "gray matter, task kept" row of the table of
the last section (the table computes all four combinations every time), so the two must agree.
Fewer regions give fewer edges to compare; keeping the task leaves a response shared by every
participant, which makes people more alike. Which effect wins is what the rerun shows; with
this few participants, a difference of one or two identifications is within the bootstrap
intervals, so do not read much into it.""",
        code_title="permutation p-value of Idiff",
        code="""# Complete the blank (...): one-sided permutation p-value of Idiff,
# p = (1 + number of null values >= observed) / (1 + number of permutations).
import numpy as np

from spineprint_utils import fingerprint as fp

rng = np.random.default_rng(5)
A = rng.normal(0.3, 0.1, size=(6, 6)) + 0.15 * np.eye(6)  # an identifiability matrix
res = fp.permutation_test(A, n_permutations=200, seed=0)  # res.null_idiff: the null

my_p = ...  # blank

if my_p is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    assert np.isclose(my_p, res.p_idiff), "Not yet: count null values >= res.idiff"
    print("Correct: p =", round(float(my_p), 4))""",
        solution="my_p = (1 + np.sum(res.null_idiff >= res.idiff)) / (1 + res.n_permutations)",
        wrong="my_p = np.mean(res.null_idiff > res.idiff)",
        figure_q="""Compare the four identifiability matrices of **The same analysis on real and simulated
cords** (real and simulated, within and between sessions). In which of them does the
diagonal stand out from its row and column, and how does that match the identification rates
glued in the next section?""",
        figure_a="""A participant is identified when their diagonal value is the largest of their row (or
column). Where the diagonal is visibly brighter than the rest, the glued identification rate
is high; where it blends into the rows, the rate drops towards chance. Within a session the two
halves share the session's state, so diagonals usually stand out more than between sessions,
in real as in simulated data; the permutation p-values say whether what you see could arise
by chance with this few participants.""",
    ),
    "05_drivers": dict(
        number=7,
        objectives="""- predict how scan length, temporal SNR, physiological noise, motion and fingerprint strength change identification and Idiff;
- separate what the pipeline recovers from what was planted (dashed lines: the simulation's ground truth);
- explain why physiology alone can identify participants, and what that means for a spine-print study.""",
        prerequisites="chapters 3 to 5 (preprocessing, connectivity, fingerprinting measures).",
        code_title="differential identifiability",
        code="""# Complete the blank (...): Idiff (Amico & Goni 2018) = 100 x (Iself - Iothers),
# with Iself the mean of the diagonal of A and Iothers the mean of its
# off-diagonal elements.
import numpy as np

from spineprint_utils import fingerprint

rng = np.random.default_rng(4)
A = rng.normal(0.3, 0.1, size=(5, 5)) + 0.2 * np.eye(5)
off = ~np.eye(len(A), dtype=bool)  # True off the diagonal

my_idiff = ...  # blank

if my_idiff is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    expected = fingerprint.differential_identifiability(A).idiff
    assert np.isclose(my_idiff, expected), "Not yet: 100 x (diagonal - off-diagonal)"
    print("Correct: Idiff =", round(float(my_idiff), 1))""",
        solution="my_idiff = 100 * (np.diag(A).mean() - A[off].mean())",
        wrong="my_idiff = np.diag(A).mean() - A[off].mean()",
        figure_q="""In the scan-length figure of **Scan length**, compare the solid line (the pipeline) with
the dashed line (the planted neural signals) and the dotted line (chance). What does the gap
between solid and dashed tell you, and at which scan length would you stop adding volumes?""",
        figure_a="""The dashed line is what the planted neural fingerprint allows at that scan length; the
solid line is what survives noise, physiology and preprocessing. The gap is the loss due to
the data and the pipeline (a solid line *above* the dashed one would mean that something other
than the neural fingerprint, such as participant-specific physiology, identifies people).
Adding volumes is worth it while both lines still climb; once identification is close to
100 % and the curves flatten, Idiff is the more sensitive measure to compare designs.""",
    ),
    "06_clinical": dict(
        number=8,
        objectives="""- summarise what spinal cord fMRI has shown in spinal cord injury, multiple sclerosis, myelopathy and ALS, and the obstacles to clinical use;
- model a focal lesion in a connectome and follow it through identification, Idiff and edgewise reliability;
- argue what an individual spine-print could, and could not yet, offer a clinician.""",
        prerequisites="chapter 5 (identification, Idiff, edgewise ICC); chapter 7 helps.",
        code_title="edges touched by a lesion",
        code="""# Complete the blank (...): the edges a lesion changes are those with at least one
# end in a lesioned region; build that (R, R) boolean mask from `inside`.
import numpy as np

from spineprint_utils import clinical

regions = [f"{s}_{h}" for s in ("C4", "C5", "C6") for h in ("LV", "RV", "LD", "RD")]
inside = clinical.lesion_regions(regions, ["C5"])  # (R,) True for the 4 horns of C5

my_mask = ...  # blank

if my_mask is Ellipsis:
    print("Not attempted yet: replace ... with your expression and rerun this cell.")
else:
    my_mask = np.array(my_mask, dtype=bool)
    np.fill_diagonal(my_mask, False)  # a region with itself is not an edge
    expected = clinical.lesion_edge_mask(regions, ["C5"], kind="coupling")
    assert np.array_equal(my_mask, expected), "Not yet: hit if i or j is inside"
    print("Correct:", int(np.triu(my_mask, 1).sum()), "edges touched")""",
        solution="my_mask = inside[:, None] | inside[None, :]",
        wrong="my_mask = inside[:, None] & inside[None, :]",
        figure_q="""In the identifiability figure of **Identifiability of the lesioned subject**, follow the
lesioned participant (red) across the three scenarios. Why does a lesion present in both
sessions hardly change identification, while a lesion that appears between the sessions does?""",
        figure_a="""Identification compares a participant with themselves across sessions. A stable lesion
changes both connectomes the same way, so the participant still matches themselves (it can
even make them more distinctive). A lesion that appears between the sessions changes only the
second connectome, lowering the self-similarity on the diagonal: the participant can drop
below others in their row and fail to be identified. A fingerprint therefore tracks *change*
in one person, which is what a clinical follow-up needs.""",
    ),
}


def _intro(c: dict) -> str:
    """The exercises intro, under the chapter's own ``## Exercises`` section (every chapter
    has one); a chapter whose exercises do not ask for a prediction gets a predict-then-run
    exercise here, as a subsection (a second ``## Exercises`` heading would repeat the
    section in the page and its table of contents)."""
    if "predict_q" not in c:
        return INTRO
    return (
        "### Predict, then run\n\n"
        f"{c['predict_q']}\n\n"
        f"```{{admonition}} Solution\n:class: dropdown\n{c['predict_a']}\n```\n\n" + INTRO
    )


def _md(cell_id: str, source: str):
    cell = nbformat.v4.new_markdown_cell(source)
    cell.id = cell_id
    return cell


def _code(cell_id: str, source: str, tags):
    cell = nbformat.v4.new_code_cell(source)
    cell.id = cell_id
    cell.metadata["tags"] = list(tags)
    return cell


def course_cells(stem: str) -> dict:
    c = CHAPTERS[stem]
    return {
        "course-header": _md("course-header", HEADER.format(**c)),
        "course-setup": _code("course-setup", SETUP, ["remove-cell"]),
        "course-exercises": _md("course-exercises", _intro(c)),
        "course-code": _md("course-code", f"**Complete the code: {c['code_title']}.**"),
        "course-code-cell": _code("course-code-cell", c["code"], ["exercise"]),
        "course-code-solution": _md(
            "course-code-solution",
            "```{admonition} Solution\n:class: dropdown\nReplace the blank line by\n\n"
            f"    {c['solution']}\n\nand rerun the cell: it prints `Correct.`\n```",
        ),
        "course-figure": _md(
            "course-figure",
            f"**{c.get('figure_title', 'Read the figure')}.** {c['figure_q']}\n\n```{{admonition}} Solution\n:class: dropdown\n{c['figure_a']}\n```",
        ),
        "course-facts": _code("course-facts", f'course.glue_chapter_facts("{stem}")', ["remove-cell"]),
    }


def update(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    new = course_cells(path.stem)
    cells = [c for c in nb.cells if c.get("id") not in new]
    # header after the title cell, setup after the parameters cell
    param = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    cells.insert(param + 1, new["course-setup"])
    cells.insert(1, new["course-header"])
    for key in ("course-exercises", "course-code", "course-code-cell", "course-code-solution",
                "course-figure", "course-facts"):
        cells.append(new[key])
    nb.cells = cells
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


def main(argv=None) -> int:
    for stem in CHAPTERS:
        update(ROOT / "notebooks" / f"{stem}.ipynb")
        print("updated", stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
