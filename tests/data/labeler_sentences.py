"""Report sentences with their expected labels, for tests/test_evaluation_labeler.py.

Written for this project in varied radiologist styles (terse, MIMIC-like, CheXpert-like,
interpretation-like); none is copied from a real report. Each case: the sentence and the findings
it states, each as (finding, location, direction, certainty, severity_after). ``location`` is a
key of progemu_lite.phantom.findings.LOCATION_TEXT or None; ``direction`` None means present
with no comparison stated; ``severity_after`` is the finding's own severity word or None.
"""

D, U = "definite", "uncertain"


def F(finding, location=None, direction=None, certainty=D, severity=None):  # noqa: N802
    return (finding, location, direction, certainty, severity)


CASES: list[tuple[str, list[tuple]]] = [
    # --- terse ---
    ("No pneumothorax.", [F("pneumothorax", direction="absent")]),
    (
        "No effusion or pneumothorax.",
        [F("pleural_effusion", direction="absent"), F("pneumothorax", direction="absent")],
    ),
    ("Small left effusion.", [F("pleural_effusion", "left", severity="small")]),
    ("Cardiomegaly.", [F("cardiomegaly")]),
    ("Bibasilar atelectasis.", [F("atelectasis", "bilateral")]),
    ("Stable cardiomegaly.", [F("cardiomegaly", direction="stable")]),
    ("RLL consolidation, new.", [F("consolidation", "right_lower_lobe", "new")]),
    ("Trace right pleural effusion.", [F("pleural_effusion", "right", severity="small")]),
    ("Lungs clear. No effusion.", [F("pleural_effusion", direction="absent")]),
    ("Tiny left apical pneumothorax.", [F("pneumothorax", "left", severity="small")]),
    ("Unchanged LUL nodule.", [F("nodule", "left_upper_lobe", "stable")]),
    ("Worsening pulmonary edema.", [F("pulmonary_edema", "bilateral", "worse")]),
    # --- MIMIC-like ---
    (
        "There is no focal consolidation, pleural effusion, or pneumothorax.",
        [
            F("consolidation", direction="absent"),
            F("pleural_effusion", direction="absent"),
            F("pneumothorax", direction="absent"),
        ],
    ),
    ("The heart size is normal.", [F("cardiomegaly", direction="absent")]),
    ("Heart size is mildly enlarged.", [F("cardiomegaly", severity="mild")]),
    (
        "Moderate cardiomegaly is unchanged.",
        [F("cardiomegaly", direction="stable", severity="moderate")],
    ),
    (
        "The cardiomediastinal silhouette is within normal limits.",
        [F("cardiomegaly", direction="absent")],
    ),
    (
        "Compared to the prior study, there has been interval increase in the left pleural effusion, "
        "now moderate in size.",
        [F("pleural_effusion", "left", "worse", severity="moderate")],
    ),
    (
        "Left basilar opacity may represent atelectasis, though pneumonia cannot be excluded.",
        [F("atelectasis", "left_lower_lobe", None, U), F("consolidation", None, None, U)],
    ),
    (
        "Mild pulmonary vascular congestion is slightly improved.",
        [F("pulmonary_edema", "bilateral", "better", severity="mild")],
    ),
    (
        "The previously seen right pneumothorax has resolved.",
        [F("pneumothorax", "right", "resolved")],
    ),
    (
        "Interval resolution of the right middle lobe pneumonia.",
        [F("consolidation", "right_middle_lobe", "resolved")],
    ),
    (
        "Retrocardiac opacity likely reflects atelectasis.",
        [F("atelectasis", "left_lower_lobe", None, U)],
    ),
    (
        "Persistent small bilateral pleural effusions.",
        [F("pleural_effusion", "bilateral", "stable", severity="small")],
    ),
    (
        "New since prior is a moderate right pleural effusion.",
        [F("pleural_effusion", "right", "new", severity="moderate")],
    ),
    (
        "Redemonstrated 9 mm nodule in the right upper lobe.",
        [F("nodule", "right_upper_lobe", "stable")],
    ),
    ("Low lung volumes with bibasilar atelectasis.", [F("atelectasis", "bilateral")]),
    (
        "Mild interstitial edema has decreased.",
        [F("pulmonary_edema", "bilateral", "better", severity="mild")],
    ),
    (
        "There is a new left lower lobe consolidation concerning for pneumonia.",
        [F("consolidation", "left_lower_lobe", "new")],
    ),
    ("Possible small right pleural effusion.", [F("pleural_effusion", "right", None, U, "small")]),
    (
        "A small left pneumothorax cannot be excluded.",
        [F("pneumothorax", "left", None, U, "small")],
    ),
    ("Left pleural effusion is no longer seen.", [F("pleural_effusion", "left", "resolved")]),
    (
        "The right-sided pleural effusion has decreased in size.",
        [F("pleural_effusion", "right", "better")],
    ),
    ("Enlarged cardiac silhouette, unchanged.", [F("cardiomegaly", direction="stable")]),
    ("Subsegmental atelectasis at the left lung base.", [F("atelectasis", "left_lower_lobe")]),
    (
        "Plate-like opacity in the right lower lung likely atelectasis.",
        [F("atelectasis", "right_lower_lobe", None, U)],
    ),
    (
        "Patchy airspace opacity in the lingula is new.",
        [F("consolidation", "lingula", "new", severity="patchy")],
    ),
    ("No new consolidation.", [F("consolidation", direction="absent")]),
    ("There is no evidence of pulmonary edema.", [F("pulmonary_edema", "bilateral", "absent")]),
    ("Negative for pneumothorax.", [F("pneumothorax", direction="absent")]),
    ("Right lower lobe collapse has improved.", [F("atelectasis", "right_lower_lobe", "better")]),
    ("Slightly increased left pleural fluid.", [F("pleural_effusion", "left", "worse")]),
    (
        "The nodular opacity in the left upper lobe has enlarged.",
        [F("nodule", "left_upper_lobe", "worse")],
    ),
    ("Right upper lobe mass is again seen.", [F("nodule", "right_upper_lobe", "stable")]),
    (
        "Improving right lower lobe airspace disease.",
        [F("consolidation", "right_lower_lobe", "better")],
    ),
    (
        "Increased pulmonary edema with new small bilateral effusions.",
        [
            F("pulmonary_edema", "bilateral", "worse"),
            F("pleural_effusion", "bilateral", "new", severity="small"),
        ],
    ),
    (
        "Stable moderate left pleural effusion with adjacent atelectasis.",
        [
            F("pleural_effusion", "left", "stable", severity="moderate"),
            F("atelectasis", "left_lower_lobe", "stable"),
        ],
    ),
    (
        "The left effusion is unchanged, and there is new right lower lobe atelectasis.",
        [F("pleural_effusion", "left", "stable"), F("atelectasis", "right_lower_lobe", "new")],
    ),
    (
        "No pneumothorax; small left pleural effusion persists.",
        [
            F("pneumothorax", direction="absent"),
            F("pleural_effusion", "left", "stable", severity="small"),
        ],
    ),
    (
        "Heart size remains enlarged but there is no edema.",
        [F("cardiomegaly", direction="stable"), F("pulmonary_edema", "bilateral", "absent")],
    ),
    # --- CheXpert-like / impression lists ---
    (
        "1. Interval worsening of right lower lobe consolidation.",
        [F("consolidation", "right_lower_lobe", "worse")],
    ),
    (
        "IMPRESSION: Moderate pulmonary edema, increased from prior.",
        [F("pulmonary_edema", "bilateral", "worse", severity="moderate")],
    ),
    (
        "2. Small bilateral pleural effusions, slightly decreased.",
        [F("pleural_effusion", "bilateral", "better", severity="small")],
    ),
    (
        "Right pleural effusion, decreased from large to moderate.",
        [F("pleural_effusion", "right", "better", severity="moderate")],
    ),
    (
        "Near complete resolution of the left lower lobe opacity.",
        [F("consolidation", "left_lower_lobe", "better")],
    ),
    ("Partially resolved right pneumothorax.", [F("pneumothorax", "right", "better")]),
    ("Questionable nodule in the right middle lobe.", [F("nodule", "right_middle_lobe", None, U)]),
    (
        "Findings suggestive of mild pulmonary edema.",
        [F("pulmonary_edema", "bilateral", None, U, "mild")],
    ),
    (
        "Blunting of the left costophrenic angle may reflect a small effusion.",
        [F("pleural_effusion", "left", None, U, "small")],
    ),
    ("The heart is not enlarged.", [F("cardiomegaly", direction="absent")]),
    ("Markedly enlarged heart.", [F("cardiomegaly", severity="severe")]),
    (
        "Large right pneumothorax has developed since the prior examination.",
        [F("pneumothorax", "right", "new", severity="large")],
    ),
    (
        "Atelectasis versus consolidation at the right base.",
        [
            F("atelectasis", "right_lower_lobe", None, U),
            F("consolidation", "right_lower_lobe", None, U),
        ],
    ),
    (
        "Left pleural effusion is now moderate, previously small.",
        [F("pleural_effusion", "left", "worse", severity="moderate")],
    ),
    ("Without pneumothorax.", [F("pneumothorax", direction="absent")]),
    ("Pneumothorax is not seen.", [F("pneumothorax", direction="absent")]),
    ("Nodules are no longer visible in the right lung.", [F("nodule", "right", "resolved")]),
    (
        "Extensive consolidation in the left upper lobe has progressed.",
        [F("consolidation", "left_upper_lobe", "worse", severity="extensive")],
    ),
    ("The heart size is stable. No effusion.", [F("pleural_effusion", direction="absent")]),
    # --- interpretation-like (our own generator's style and near it) ---
    (
        "The left pleural effusion has become moderate.",
        [F("pleural_effusion", "left", None, severity="moderate")],
    ),
    (
        "A new small right pneumothorax is seen.",
        [F("pneumothorax", "right", "new", severity="small")],
    ),
    (
        "Cardiomegaly has improved from severe to moderate.",
        [F("cardiomegaly", None, "better", severity="moderate")],
    ),
    ("The nodule in the lingula is larger.", [F("nodule", "lingula", "worse")]),
    (
        "Atelectasis in the right middle lobe has resolved, and the pulmonary edema is unchanged.",
        [
            F("atelectasis", "right_middle_lobe", "resolved"),
            F("pulmonary_edema", "bilateral", "stable"),
        ],
    ),
    # --- harder wording: mixed clauses, signs that represent findings, paired sides ---
    (
        "Since the prior radiograph, the right lower lobe consolidation has slightly improved but a "
        "small right effusion has developed.",
        [
            F("consolidation", "right_lower_lobe", "better"),
            F("pleural_effusion", "right", "new", severity="small"),
        ],
    ),
    ("There is mild enlargement of the cardiac silhouette.", [F("cardiomegaly", severity="mild")]),
    (
        "Pulmonary edema has resolved; small bilateral effusions remain.",
        [
            F("pulmonary_edema", "bilateral", "resolved"),
            F("pleural_effusion", "bilateral", "stable", severity="small"),
        ],
    ),
    ("No acute cardiopulmonary process.", []),
    (
        "Interval placement of a right chest tube with decrease in size of the right pneumothorax.",
        [F("pneumothorax", "right", "better")],
    ),
    (
        "Increased opacity at the right lung base could represent aspiration or pneumonia.",
        [F("consolidation", "right_lower_lobe", "worse", U)],
    ),
    (
        "There is persistent moderate pulmonary edema, not significantly changed.",
        [F("pulmonary_edema", "bilateral", "stable", severity="moderate")],
    ),
    (
        "The left lower lobe collapse has re-expanded.",
        [F("atelectasis", "left_lower_lobe", "resolved")],
    ),
    (
        "Moderate right and small left pleural effusions, both increased.",
        [
            F("pleural_effusion", "right", "worse", severity="moderate"),
            F("pleural_effusion", "left", "worse", severity="small"),
        ],
    ),
    ("Stable appearance of the left upper lobe mass.", [F("nodule", "left_upper_lobe", "stable")]),
    ("Heart size is top normal.", [F("cardiomegaly", direction="absent")]),
    (
        "Hazy opacity at the left base likely represents layering effusion.",
        [F("pleural_effusion", "left", None, U)],
    ),
    (
        "No significant change in the moderate left pneumothorax.",
        [F("pneumothorax", "left", "stable", severity="moderate")],
    ),
    ("Right upper lobe pneumonia is clearing.", [F("consolidation", "right_upper_lobe", "better")]),
    (
        "Small left pleural effusion is new compared to the prior study.",
        [F("pleural_effusion", "left", "new", severity="small")],
    ),
    (
        "Bilateral airspace opacities have worsened, likely due to edema.",
        [F("pulmonary_edema", "bilateral", "worse", U)],
    ),
    (
        "Right middle lobe atelectasis is less prominent.",
        [F("atelectasis", "right_middle_lobe", "better")],
    ),
    (
        "Apart from mild cardiomegaly, the chest is unremarkable.",
        [F("cardiomegaly", severity="mild")],
    ),
    (
        "The 1.5 cm nodule in the left lower lobe is unchanged in size.",
        [F("nodule", "left_lower_lobe", "stable")],
    ),
    (
        "There is no longer evidence of pulmonary vascular congestion.",
        [F("pulmonary_edema", "bilateral", "resolved")],
    ),
    (
        "Airspace opacity in the right upper lobe concerning for pneumonia.",
        [F("consolidation", "right_upper_lobe", None, U)],
    ),
    # --- a first blind batch, written before the labeler saw it (first run: 47 of 50 right;
    # the labeler was then fixed) ---
    (
        "Small right apical pneumothorax, decreased since the prior exam.",
        [F("pneumothorax", "right", "better", severity="small")],
    ),
    (
        "Moderate to large left pleural effusion with compressive atelectasis, increased.",
        [
            F("pleural_effusion", "left", "worse", severity="large"),
            F("atelectasis", "left_lower_lobe", "worse"),
        ],
    ),
    (
        "The lungs are clear without consolidation or edema.",
        [F("consolidation", direction="absent"), F("pulmonary_edema", "bilateral", "absent")],
    ),
    ("Cardiac silhouette is enlarged.", [F("cardiomegaly")]),
    (
        "Worsening bibasilar opacities, likely atelectasis.",
        [F("atelectasis", "bilateral", "worse", U)],
    ),
    (
        "Mild interstitial pulmonary edema, new from prior.",
        [F("pulmonary_edema", "bilateral", "new", severity="mild")],
    ),
    ("Right pleural effusion has nearly resolved.", [F("pleural_effusion", "right", "better")]),
    (
        "There is a persistent right middle lobe opacity which may represent atelectasis or scarring.",
        [F("atelectasis", "right_middle_lobe", "stable", U)],
    ),
    ("No definite focal consolidation.", [F("consolidation", direction="absent")]),
    ("Unchanged severe cardiomegaly.", [F("cardiomegaly", direction="stable", severity="severe")]),
    ("Left lower lobe pneumonia has progressed.", [F("consolidation", "left_lower_lobe", "worse")]),
    (
        "Pleural effusions have increased bilaterally.",
        [F("pleural_effusion", "bilateral", "worse")],
    ),
    (
        "Findings concerning for a new right upper lobe pneumonia.",
        [F("consolidation", "right_upper_lobe", "new", U)],
    ),
    (
        "Improved aeration at the left base with decreased left effusion.",
        [F("pleural_effusion", "left", "better")],
    ),
    (
        "Small pneumothorax at the left apex is again noted.",
        [F("pneumothorax", "left", "stable", severity="small")],
    ),
    (
        "Vascular congestion has worsened and there is a new small left effusion.",
        [
            F("pulmonary_edema", "bilateral", "worse"),
            F("pleural_effusion", "left", "new", severity="small"),
        ],
    ),
    ("The right lower lobe nodule has grown.", [F("nodule", "right_lower_lobe", "worse")]),
    (
        "No evidence of pneumothorax following chest tube removal.",
        [F("pneumothorax", direction="absent")],
    ),
    ("Interval improvement in multifocal airspace disease.", [F("consolidation", None, "better")]),
    (
        "Possible trace left pleural effusion versus pleural thickening.",
        [F("pleural_effusion", "left", None, U, "small")],
    ),
    ("Left-sided pneumothorax, now large.", [F("pneumothorax", "left", None, severity="large")]),
    ("Heart is normal in size. Lungs are clear.", [F("cardiomegaly", direction="absent")]),
    (
        "Stable size of the small right pleural effusion.",
        [F("pleural_effusion", "right", "stable", severity="small")],
    ),
    ("Resolved left lower lobe collapse.", [F("atelectasis", "left_lower_lobe", "resolved")]),
    ("Lingular atelectasis is unchanged.", [F("atelectasis", "lingula", "stable")]),
    ("Decreased right basilar opacity.", [F("consolidation", "right_lower_lobe", "better")]),
    (
        "Increasing left retrocardiac opacification.",
        [F("consolidation", "left_lower_lobe", "worse")],
    ),
    (
        "Slight interval decrease in size of the left apical pneumothorax.",
        [F("pneumothorax", "left", "better")],
    ),
    (
        "The previously noted right upper lobe nodule is not seen on the current study.",
        [F("nodule", "right_upper_lobe", "absent")],
    ),
    (
        "Persistent but improved right lower lobe consolidation.",
        [F("consolidation", "right_lower_lobe", "better")],
    ),
    (
        "Probable small bilateral pleural effusions.",
        [F("pleural_effusion", "bilateral", None, U, "small")],
    ),
    ("No large pleural effusion.", [F("pleural_effusion", direction="absent", severity="large")]),
    ("There is new mild cardiomegaly.", [F("cardiomegaly", None, "new", severity="mild")]),
    ("Enlargement of the cardiac silhouette has progressed.", [F("cardiomegaly", None, "worse")]),
    (
        "Right-sided pleural fluid has increased in volume.",
        [F("pleural_effusion", "right", "worse")],
    ),
    ("A 2 cm mass in the left upper lobe is new.", [F("nodule", "left_upper_lobe", "new")]),
    (
        "Atelectasis at the right base has cleared.",
        [F("atelectasis", "right_lower_lobe", "resolved")],
    ),
    ("Pulmonary edema is markedly worse.", [F("pulmonary_edema", "bilateral", "worse")]),
    (
        "The moderate pulmonary edema has improved to mild.",
        [F("pulmonary_edema", "bilateral", "better", severity="mild")],
    ),
    (
        "Small right pneumothorax, unchanged; no new effusion.",
        [
            F("pneumothorax", "right", "stable", severity="small"),
            F("pleural_effusion", direction="absent"),
        ],
    ),
    (
        "Consolidation in the left upper lobe and lingula is stable.",
        [F("consolidation", "left_upper_lobe", "stable")],
    ),
    (
        "Cannot exclude early pneumonia in the right lower lobe.",
        [F("consolidation", "right_lower_lobe", None, U)],
    ),
    (
        "Ill-defined opacity in the right mid lung, possibly pneumonia.",
        [F("consolidation", "right_middle_lobe", None, U)],
    ),
    ("The heart size has decreased.", [F("cardiomegaly", None, "better")]),
    (
        "There is a large right pleural effusion, which has increased since the prior study.",
        [F("pleural_effusion", "right", "worse", severity="large")],
    ),
    (
        "Left lower lobe consolidation has resolved, with residual small effusion.",
        [
            F("consolidation", "left_lower_lobe", "resolved"),
            F("pleural_effusion", "left", None, severity="small"),
        ],
    ),
    ("New moderate left pneumothorax.", [F("pneumothorax", "left", "new", severity="moderate")]),
    (
        "No focal airspace consolidation or pneumothorax is identified.",
        [F("consolidation", direction="absent"), F("pneumothorax", direction="absent")],
    ),
    (
        "Multiple pulmonary nodules are redemonstrated bilaterally.",
        [F("nodule", "bilateral", "stable")],
    ),
    (
        "Patchy right lower lobe opacity has increased, concerning for worsening pneumonia.",
        [F("consolidation", "right_lower_lobe", "worse", U, "patchy")],
    ),
    # --- a second blind batch (first run: 17 of 20 right; one expectation inferred the side from
    # a chest tube and was corrected, one sentence whose place is only in an earlier clause
    # ("... left lung base; residual atelectasis is seen.") is a known limitation, left out) ---
    (
        "There has been interval worsening of the bilateral pleural effusions.",
        [F("pleural_effusion", "bilateral", "worse")],
    ),
    (
        "Compared with the prior exam, the right pneumothorax is slightly smaller.",
        [F("pneumothorax", "right", "better")],
    ),
    (
        "Left basal atelectasis without significant change.",
        [F("atelectasis", "left_lower_lobe", "stable")],
    ),
    ("No new or worsening consolidation.", [F("consolidation", direction="absent")]),
    (
        "Status post right chest tube placement with resolution of the pneumothorax.",
        [F("pneumothorax", None, "resolved")],
    ),
    ("Heart size and mediastinal contours are stable.", []),
    (
        "Moderate cardiomegaly with mild pulmonary edema.",
        [
            F("cardiomegaly", severity="moderate"),
            F("pulmonary_edema", "bilateral", severity="mild"),
        ],
    ),
    (
        "Increased size of the left apical pneumothorax, now moderate.",
        [F("pneumothorax", "left", "worse", severity="moderate")],
    ),
    (
        "The right middle lobe opacity has largely resolved.",
        [F("consolidation", "right_middle_lobe", "better")],
    ),
    ("Findings may reflect early pulmonary edema.", [F("pulmonary_edema", "bilateral", None, U)]),
    (
        "There is a small amount of pleural fluid on the right.",
        [F("pleural_effusion", "right", severity="small")],
    ),
    (
        "The pneumothorax on the left has not changed in size.",
        [F("pneumothorax", "left", "stable")],
    ),
    (
        "Bilateral lower lobe consolidations, right worse than left, have progressed.",
        [F("consolidation", "bilateral", "worse")],
    ),
    (
        "Lung nodule in the right upper lobe measuring 1 cm, not significantly changed.",
        [F("nodule", "right_upper_lobe", "stable")],
    ),
    ("No pleural effusions are identified.", [F("pleural_effusion", "bilateral", "absent")]),
    (
        "Severe pulmonary edema has developed since yesterday.",
        [F("pulmonary_edema", "bilateral", "new", severity="severe")],
    ),
    ("Left upper lobe collapse is suspected.", [F("atelectasis", "left_upper_lobe", None, U)]),
    (
        "Minimal residual pneumothorax at the right apex.",
        [F("pneumothorax", "right", None, severity="small")],
    ),
    (
        "The effusion on the left is slightly larger and the effusion on the right is unchanged.",
        [F("pleural_effusion", "left", "worse"), F("pleural_effusion", "right", "stable")],
    ),
    # --- not English / nothing to find ---
    ("Kein Pleuraerguss. Das Herz ist normal gross.", []),
    ("\u672a\u89c1\u6c14\u80f8\u3002", []),
    ("Lungs are clear.", []),
]
