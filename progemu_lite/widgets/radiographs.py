"""Lesson 1 widgets: a DICOM windowing viewer, an anatomy tour, and a findings gallery."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import numpy as np
from pydicom.dataset import Dataset

from ..data.deid import Deidentifier, DeidReport
from ..data.dicom import (
    PERCENTILE_WINDOW,
    apply_window,
    check_chest_radiograph,
    decode_stored_values,
    load_dataset,
)
from ..phantom.findings import FINDINGS, finding_spec, location_text
from ..phantom.state import ChestState
from .figures import OKABE_ITO, FigurePanel, StaticFigure, matplotlib_png, outline

SAMPLE_DICOM = "RG1_UNCR.dcm"  # pydicom-data's adult PA chest CR (MONOCHROME1, 15-bit)
COURSE_SALT = "progemu-lite course"  # a fixed key: the same pseudonyms in every class run

# What the header table shows of a de-identified radiograph.
HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "BitsStored",
    "Rows",
    "Columns",
    "WindowCenter",
    "WindowWidth",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)


def sample_dicom_path(name: str = SAMPLE_DICOM) -> Path:
    """Path of a radiograph shipped by PyPI ``pydicom-data`` (installed with the course extra)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError as err:  # pragma: no cover - pydicom is a core dependency
        raise ImportError(f"pydicom is needed to find {name}: {err}") from err
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(
            f"{name} not found: install the course extra (pip install 'progemu-lite[course]', "
            "which brings pydicom-data)"
        )
    return Path(path)


def load_deidentified(
    path: str | Path | None = None, salt: str = COURSE_SALT
) -> tuple[Dataset, DeidReport]:
    """Read a DICOM file and de-identify it (PS3.15 Basic Profile) before anything shows it."""
    dataset = load_dataset(sample_dicom_path() if path is None else path)
    return Deidentifier(salt=salt).deidentify(dataset)


def deidentification_html(report: DeidReport) -> str:
    """What the Deidentifier did, as an HTML list (names of attributes, never their old values)."""

    def items(names: list[str]) -> str:
        return html.escape(", ".join(names)) if names else "none"

    rows = [
        ("Replaced by a pseudonym", items(report.replaced)),
        ("Emptied", items(report.emptied)),
        ("Removed", items(report.removed)),
        ("Dates/times shifted", f"{items(report.shifted)} (by {report.date_shift_days} days)"),
        ("UIDs remapped", items(report.remapped_uids)),
        ("Pseudonym", html.escape(report.patient_pseudonym)),
    ]
    warnings = "".join(f"<li><b>Warning:</b> {html.escape(w)}</li>" for w in report.warnings)
    body = "".join(f"<li><b>{k}:</b> {v}</li>" for k, v in rows)
    return f"<ul>{body}{warnings}</ul>"


def header_html(dataset: Dataset, keywords: tuple[str, ...] = HEADER_KEYWORDS) -> str:
    """A two-column table of selected header attributes (absent ones say so)."""
    rows = []
    for keyword in keywords:
        value = dataset.get(keyword, None)
        text = "(absent)" if value is None else str(value) or "(empty)"
        rows.append(f"<tr><td>{keyword}</td><td>{html.escape(text)}</td></tr>")
    return "<table><tr><th>Attribute</th><th>Value</th></tr>" + "".join(rows) + "</table>"


def _shrink(values: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``values`` so the long side is at most ``size`` (aspect kept)."""
    from PIL import Image

    rows, cols = values.shape
    scale = min(1.0, size / max(rows, cols))
    if scale == 1.0:
        return values.astype(np.float32)
    shape = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize(shape, resample=Image.Resampling.BOX), dtype=np.float32)


class DicomWindowing(widgets.VBox):
    """Window center/width sliders over a de-identified radiograph's modality values.

    Refuses a dataset that does not say PatientIdentityRemoved = YES: de-identify first
    (:func:`load_deidentified`). MONOCHROME1 images are inverted after windowing (air dark).
    """

    def __init__(self, dataset: Dataset, display_size: int = 512):
        from pydicom.pixels import apply_modality_lut

        if str(dataset.get("PatientIdentityRemoved", "")).upper() != "YES":
            raise ValueError(
                "this dataset is not de-identified (PatientIdentityRemoved is not YES): pass it "
                "through progemu_lite.data.deid.Deidentifier before displaying it"
            )
        check_chest_radiograph(dataset)
        stored = decode_stored_values(dataset)
        values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)
        self.values = _shrink(values, display_size)
        self.original_shape = stored.shape
        self.monochrome1 = (
            str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
        )
        self.function = str(dataset.get("VOILUTFunction", "") or "LINEAR")
        low, high = (float(v) for v in np.percentile(self.values, PERCENTILE_WINDOW))
        self.auto_window = ((low + high) / 2, max(high - low, 2.0))
        self.dicom_window = _dicom_window(dataset)
        lowest, highest = float(self.values.min()), float(self.values.max())
        span = max(highest - lowest, 2.0)
        style = {"description_width": "110px"}
        layout = widgets.Layout(width="480px")
        self.center = widgets.FloatSlider(
            description="Window center",
            min=lowest,
            max=highest,
            step=1.0,
            readout_format=".0f",
            style=style,
            layout=layout,
            continuous_update=False,
        )
        self.width = widgets.FloatSlider(
            description="Window width",
            min=2.0,
            max=2.0 * span,
            step=1.0,
            readout_format=".0f",
            style=style,
            layout=layout,
            continuous_update=False,
        )
        self.reset_button = widgets.Button(
            description="DICOM window", tooltip="The window stored in the file's header"
        )
        self.auto_button = widgets.Button(
            description="Auto window", tooltip="0.5th to 99.5th percentile of the pixel values"
        )
        self.info = widgets.HTML()
        self.panel = FigurePanel(width=min(display_size, 512))
        self.reset_button.on_click(lambda _: self.set_window(*self._start_window()))
        self.auto_button.on_click(lambda _: self.set_window(*self.auto_window))
        self._quiet = False
        self.center.observe(self._on_change, names="value")
        self.width.observe(self._on_change, names="value")
        super().__init__(
            [
                widgets.HBox([self.reset_button, self.auto_button]),
                self.center,
                self.width,
                self.info,
                self.panel,
            ]
        )
        self.set_window(*self._start_window())

    def _start_window(self) -> tuple[float, float]:
        return self.dicom_window or self.auto_window

    def set_window(self, center: float, width: float) -> None:
        """Move both sliders (clipped to their ranges) and redraw once."""
        self._quiet = True
        try:
            self.center.value = float(np.clip(center, self.center.min, self.center.max))
            self.width.value = float(np.clip(width, self.width.min, self.width.max))
        finally:
            self._quiet = False
        self.redraw()

    def _on_change(self, _change) -> None:
        if not self._quiet:
            self.redraw()

    def windowed(self) -> np.ndarray:
        """The display image in [0, 1], air dark, for the current sliders."""
        image = apply_window(self.values, self.center.value, self.width.value, self.function)
        return 1.0 - image if self.monochrome1 else image

    def redraw(self) -> None:
        center, width = self.center.value, self.width.value
        low, high = center - width / 2, center + width / 2
        inverted = (
            " The file is MONOCHROME1 (low stored values are meant to look white), so the"
            " windowed image is inverted to show air dark."
            if self.monochrome1
            else ""
        )
        self.info.value = (
            f"Values below {low:.0f} show black and above {high:.0f} white; the {width:.0f} "
            f"values between are spread over the gray scale.{inverted}"
        )
        rows, cols = self.original_shape
        self.panel.show(
            self.windowed(),
            alt=(
                f"De-identified adult PA chest radiograph, windowed at center {center:.0f} and "
                f"width {width:.0f}"
            ),
            caption=(
                f"The pydicom-data chest radiograph ({rows} x {cols} pixels, shown shrunk), "
                f"de-identified, window center {center:.0f} / width {width:.0f}."
            ),
        )


def _dicom_window(dataset: Dataset) -> tuple[float, float] | None:
    """The first Window Center/Width pair of the header, if usable."""
    from pydicom.multival import MultiValue

    try:
        values = [dataset.WindowCenter, dataset.WindowWidth]
        center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in values)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return (center, width) if np.isfinite(center) and width > 1 else None


# --------------------------------------------------------------------------------------------
# Simulated anatomy and findings


def _patient(seed: int):
    from ..phantom.anatomy import sample_patient

    return sample_patient(np.random.default_rng(seed))


def anatomy_tour(seed: int = 0, size: int = 512) -> StaticFigure:
    """A normal simulated PA radiograph with its main structures labelled.

    Labels sit at the phantom's own anatomy coordinates (so they stay right for every seed);
    lung and heart outlines come from the renderer's masks.
    """
    from matplotlib.figure import Figure

    from ..phantom.render import Acquisition, Grid, PatientRenderer

    anatomy = _patient(seed)
    radiograph = PatientRenderer(anatomy, size).render(ChestState(), Acquisition())
    grid = Grid(size)

    def px(x_cm: float, y_cm: float) -> tuple[float, float]:
        return float(grid.to_pixel(np.float32(x_cm))), float(grid.to_pixel(np.float32(y_cm)))

    thorax = anatomy.thorax_half_width
    labels = [
        ("Right lung (patient's right)", px(-thorax * 0.55, -4.0), px(-19.5, -12.0)),
        ("Left lung", px(thorax * 0.6, -4.0), px(12.0, -12.0)),
        ("Heart", px(*anatomy.heart_center), px(-3.0, 17.5)),
        ("Aortic knob", px(anatomy.aortic_knob[0], anatomy.aortic_knob[1]), px(9.0, -16.5)),
        ("Trachea", px(0.0, anatomy.lung_apex_y + 2.0), px(-4.0, -19.5)),
        ("Right hilum", px(*anatomy.hilum_right), px(-19.5, -1.0)),
        ("Left hilum", px(*anatomy.hilum_left), px(11.0, -6.5)),
        ("Right hemidiaphragm", px(-thorax * 0.45, anatomy.right_dome_y), px(-19.5, 15.0)),
        ("Left hemidiaphragm", px(thorax * 0.45, anatomy.left_dome_y), px(10.0, 14.0)),
        (
            "Costophrenic angle",
            px(-thorax * 0.92, anatomy.right_dome_y + anatomy.dome_drop * 0.85),
            px(-19.5, 19.0),
        ),
        ("Clavicle", px(-thorax * 0.5, anatomy.clavicle_y - 0.8), px(-19.5, -16.5)),
    ]
    fig = Figure(figsize=(6.4, 6.4), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(radiograph.image, cmap="gray", vmin=0, vmax=255)
    ax.contour(radiograph.lung_mask, levels=[0.5], colors=[OKABE_ITO["sky_blue"]], linewidths=1)
    if radiograph.heart_mask is not None:
        ax.contour(radiograph.heart_mask, levels=[0.5], colors=[OKABE_ITO["orange"]], linewidths=1)
    for text, target, where in labels:
        ax.annotate(
            text,
            xy=target,
            xytext=where,
            color="black",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.2", "fc": OKABE_ITO["yellow"], "alpha": 0.9},
            arrowprops={"arrowstyle": "->", "color": OKABE_ITO["yellow"], "lw": 1.2},
        )
    ax.set_axis_off()
    names = ", ".join(text for text, _, _ in labels)
    return StaticFigure(
        matplotlib_png(fig),
        alt=f"Simulated normal PA chest radiograph with labelled structures: {names}",
        caption=(
            f"Anatomy tour (simulated patient {seed}, {size} px). Blue: lung outlines; orange: "
            "cardiac silhouette. On a PA view the patient's right is on the image left."
        ),
        width=512,
    )


def describe_finding(name: str, location: str | None, severity: int) -> str:
    """``moderate left pleural effusion`` / ``no cardiomegaly`` in the phantom's words."""
    spec = finding_spec(name)
    if severity == 0:
        return f"no {spec.text}"
    where = location_text(location)
    if location is not None and location.endswith(("_lobe", "lingula")):
        return f"{spec.severity_word(severity)} {spec.text} in the {where}"
    return " ".join(p for p in (spec.severity_word(severity), where, spec.text) if p)


class FindingsGallery(widgets.VBox):
    """Pick a finding, where it is and how severe: the same simulated patient without and with it.

    The acquisition is fixed (same exposure, position and noise) so the two images differ only
    by the finding. ``outline_region`` draws where the finding can show (Okabe-Ito orange).
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 256,
        finding: str = "pleural_effusion",
        severity: int = 2,
    ):
        from ..phantom.render import Acquisition, check_size

        self.size = check_size(size)
        self.seed = seed
        self.acquisition = Acquisition()
        self.finding = widgets.Dropdown(
            description="Finding", options=[(spec.text, name) for name, spec in FINDINGS.items()]
        )
        self.finding.value = finding_spec(finding).name
        self.location = widgets.Dropdown(description="Location")
        self.severity = widgets.IntSlider(
            description="Severity", min=0, max=3, value=severity, continuous_update=False
        )
        self.severity_word = widgets.Label()
        self.outline_region = widgets.Checkbox(description="Outline where it shows", value=False)
        self.new_patient = widgets.Button(
            description="New patient", tooltip="Draw another simulated patient"
        )
        self.normal_panel = FigurePanel(width=min(self.size, 384))
        self.finding_panel = FigurePanel(width=min(self.size, 384))
        self.renders = 0
        self._busy = False
        self._set_locations()
        self._new_renderer()
        self.finding.observe(self._on_finding, names="value")
        for control in (self.location, self.severity, self.outline_region):
            control.observe(lambda _: self.redraw(), names="value")
        self.new_patient.on_click(self._on_new_patient)
        super().__init__(
            [
                widgets.HBox([self.finding, self.location]),
                widgets.HBox([self.severity, self.severity_word]),
                widgets.HBox([self.outline_region, self.new_patient]),
                widgets.HBox([self.normal_panel, self.finding_panel]),
            ]
        )
        self.redraw()

    def _set_locations(self) -> None:
        spec = finding_spec(self.finding.value)
        self.location.options = [
            ("(one place)" if loc is None else location_text(loc), loc) for loc in spec.locations
        ]
        self.location.value = spec.locations[0]
        self.location.disabled = len(spec.locations) == 1

    def _new_renderer(self) -> None:
        from ..phantom.render import PatientRenderer

        self.renderer = PatientRenderer(_patient(self.seed), self.size)
        self.normal = self.renderer.render(ChestState(), self.acquisition).image

    def _on_finding(self, _change) -> None:
        self._busy = True  # one redraw for the finding change, not one per location reset
        try:
            self._set_locations()
        finally:
            self._busy = False
        self.redraw()

    def _on_new_patient(self, _button) -> None:
        self.seed += 1
        self._new_renderer()
        self.redraw()

    def state(self) -> ChestState:
        return ChestState().with_severity(
            self.finding.value, self.location.value, self.severity.value
        )

    def redraw(self) -> None:
        if self._busy:
            return
        name, location, severity = self.finding.value, self.location.value, self.severity.value
        spec = finding_spec(name)
        self.severity_word.value = f"{severity}: {spec.severity_word(severity)}"
        image = self.renderer.render(self.state(), self.acquisition).image
        normal = self.normal
        if self.outline_region.value:
            region = self.renderer.region(name, location, self.acquisition)
            image, normal = outline(image, region), outline(normal, region)
        described = describe_finding(name, location, severity)
        self.normal_panel.show(
            normal,
            alt=f"Simulated normal PA chest radiograph of patient {self.seed}",
            caption=f"Patient {self.seed} without findings.",
        )
        self.finding_panel.show(
            image,
            alt=f"The same simulated patient with {described}",
            caption=f"The same patient with {described} (severity {severity} of 3).",
        )
        self.renders += 1
