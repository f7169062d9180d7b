"""MMLU's 57 subjects grouped into the four categories that papers report.

This is the standard map of the MMLU authors (hendrycks/test, `categories.py`): each subject has a
subcategory, and subcategories fold into STEM, Humanities, Social Sciences and Other (business,
health, miscellaneous).
"""

from __future__ import annotations

STEM = "STEM"
HUMANITIES = "Humanities"
SOCIAL_SCIENCES = "Social Sciences"
OTHER = "Other"

MMLU_CATEGORY_NAMES: tuple[str, ...] = (STEM, HUMANITIES, SOCIAL_SCIENCES, OTHER)

_SUBJECTS_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    STEM: (
        "abstract_algebra",
        "astronomy",
        "college_biology",
        "college_chemistry",
        "college_computer_science",
        "college_mathematics",
        "college_physics",
        "computer_security",
        "conceptual_physics",
        "electrical_engineering",
        "elementary_mathematics",
        "high_school_biology",
        "high_school_chemistry",
        "high_school_computer_science",
        "high_school_mathematics",
        "high_school_physics",
        "high_school_statistics",
        "machine_learning",
    ),
    HUMANITIES: (
        "formal_logic",
        "high_school_european_history",
        "high_school_us_history",
        "high_school_world_history",
        "international_law",
        "jurisprudence",
        "logical_fallacies",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
        "prehistory",
        "professional_law",
        "world_religions",
    ),
    SOCIAL_SCIENCES: (
        "econometrics",
        "high_school_geography",
        "high_school_government_and_politics",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "high_school_psychology",
        "human_sexuality",
        "professional_psychology",
        "public_relations",
        "security_studies",
        "sociology",
        "us_foreign_policy",
    ),
    OTHER: (
        "anatomy",
        "business_ethics",
        "clinical_knowledge",
        "college_medicine",
        "global_facts",
        "human_aging",
        "management",
        "marketing",
        "medical_genetics",
        "miscellaneous",
        "nutrition",
        "professional_accounting",
        "professional_medicine",
        "virology",
    ),
}

MMLU_CATEGORIES: dict[str, str] = {
    subject: category
    for category, subjects in _SUBJECTS_BY_CATEGORY.items()
    for subject in subjects
}
"""Subject (folder name, e.g. "anatomy") -> category name."""
