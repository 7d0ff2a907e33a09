"""What the notebooks show: widgets and captioned figures that only call the library.

Every widget runs headless (construct it, set values, call ``button.click()``), so tests drive
them without a browser; images are replaced in place (:class:`FigurePanel`), never drawn into a
``with out:`` block. Later lessons add their modules here the same way.
"""

from .figures import FigurePanel, StaticFigure, difference_image, figure_html, png_bytes
from .grading import (
    GRADING_EXAMPLE,
    Grade,
    GradingCase,
    InterpretationGrader,
    compare_interpretations,
    grade_many,
    score_table,
)
from .pairs import (
    PairBrowser,
    annotation_html,
    course_dataset,
    dataset_summary,
    pair_json_html,
    pair_texts_html,
)
from .radiographs import (
    DicomWindowing,
    FindingsGallery,
    anatomy_tour,
    deidentification_html,
    header_html,
    load_deidentified,
    sample_dicom_path,
)

__all__ = [
    "GRADING_EXAMPLE",
    "DicomWindowing",
    "FigurePanel",
    "FindingsGallery",
    "Grade",
    "GradingCase",
    "InterpretationGrader",
    "PairBrowser",
    "StaticFigure",
    "anatomy_tour",
    "annotation_html",
    "compare_interpretations",
    "course_dataset",
    "dataset_summary",
    "deidentification_html",
    "difference_image",
    "figure_html",
    "grade_many",
    "header_html",
    "load_deidentified",
    "pair_json_html",
    "pair_texts_html",
    "png_bytes",
    "sample_dicom_path",
    "score_table",
]
