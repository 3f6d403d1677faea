"""The PEFTJob spec: the one source of truth for every field.

The CRD schema (crds/peftjob.yaml), the operator's validation, the trainer's configuration and the CLI's
`validate` are all derived from these models. Field names are snake_case in Python and camelCase in YAML,
as Kubernetes users expect. Cross-field rules the API server can enforce carry a CEL twin in
`x-kubernetes-validations` (see `cel`), so `kubectl apply` refuses them before the operator sees them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "peft.dev"
API_VERSION = "v1alpha1"
KIND = "PEFTJob"
PLURAL = "peftjobs"

# Kubernetes limits: a pod's hostname and a Service name are DNS-1035 labels of at most 63 characters.
DNS_LABEL_MAX = 63
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Task = Literal["causal-lm", "sequence-classification", "image-classification"]
METHOD_NAMES = ("lora", "adapter", "prefixTuning", "promptTuning", "pTuning", "vpt")

# Which method fits which task. Families inside a task (BERT vs RoBERTa, GPT-2 vs Llama) are checked by
# the trainer when it sees the model's config; the README's method x family table mirrors this.
METHOD_TASKS: dict[str, tuple[str, ...]] = {
    "lora": ("causal-lm", "sequence-classification", "image-classification"),
    "adapter": ("causal-lm", "sequence-classification", "image-classification"),
    "prefixTuning": ("causal-lm", "sequence-classification"),
    "promptTuning": ("causal-lm", "sequence-classification"),
    "pTuning": ("causal-lm", "sequence-classification"),
    "vpt": ("image-classification",),
}

SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


def cel(rule: str, message: str, *more: tuple[str, str]) -> dict[str, Any]:
    """CEL rules (rule, message, then more pairs) for the generated CRD, kept next to the pydantic checks
    they mirror."""
    rules = [(rule, message), *more]
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


def preserve_unknown(description: str) -> dict[str, Any]:
    """Schema extra for free-form Kubernetes objects (affinity, volumes, ...) passed through verbatim."""
    return {"x-kubernetes-preserve-unknown-fields": True, "description": description}


class ApiModel(BaseModel):
    """camelCase aliases, unknown fields rejected, values validated on assignment too."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


# ---------------------------------------------------------------------------------------------- model


class ModelSpec(ApiModel):
    """The frozen backbone."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "self.task == 'causal-lm' || has(self.numLabels)",
            "numLabels is required for classification tasks",
            ("self.task != 'causal-lm' || !has(self.numLabels)",
             "numLabels is only for classification tasks: causal-lm predicts tokens"),
        )
    )

    source: str = Field(
        min_length=1,
        description="Hugging Face hub id, an s3:// prefix holding a saved model, or a local/PVC path.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    task: Task = Field("causal-lm", description="What the backbone is trained for.")
    num_labels: int | None = Field(None, ge=2, description="Classes, for classification tasks.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the frozen backbone is loaded in."
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint.")

    @model_validator(mode="after")
    def _labels_for_classification(self) -> ModelSpec:
        if self.task != "causal-lm" and self.num_labels is None:
            raise ValueError(f"numLabels is required for task {self.task}")
        if self.task == "causal-lm" and self.num_labels is not None:
            raise ValueError(
                "numLabels is only for classification tasks: task causal-lm predicts tokens, remove numLabels "
                "(or set task to sequence-classification)"
            )
        return self


# --------------------------------------------------------------------------------------------- methods


class MethodBase(ApiModel):
    """Fields every method shares."""

    train_head: bool = Field(
        True, description="Train the task head (classifier) too, for classification tasks."
    )


class LoraSpec(MethodBase):
    """LoRA (Hu et al. 2021): W + (alpha/r)·B·A beside the target Linear layers."""

    r: int = Field(8, gt=0, le=4096, description="Rank of A and B.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator: the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] | None = Field(
        None,
        description="Module name suffixes to adapt (e.g. q_proj, v_proj); default: the family's attention projections.",
    )
    target_pattern: str | None = Field(
        None, description="Regular expression matched against full module names, instead of targetModules."
    )

    @field_validator("target_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not name for name in value)):
            raise ValueError("must list at least one non-empty module name")
        return value


class AdapterSpec(MethodBase):
    """Houlsby adapters (2019): a bottleneck after attention output and after the feed-forward, per layer."""

    bottleneck_size: int = Field(64, gt=0, description="Width of the down-projection.")
    non_linearity: Literal["relu", "gelu", "tanh", "swish"] = Field("gelu", description="Between the projections.")
    init_scale: float = Field(
        1e-3, ge=0, le=1, description="Std of the near-zero init of the projections (near-identity at start)."
    )
    train_layer_norms: bool = Field(True, description="Train the LayerNorms as Houlsby et al. do.")


class PrefixTuningSpec(MethodBase):
    """Prefix-Tuning (Li & Liang 2021): trained key/value prefixes in every attention layer."""

    num_virtual_tokens: int = Field(20, gt=0, le=1024, description="Prefix length per layer.")
    projection: bool = Field(True, description="Reparameterise the prefixes through an MLP while training.")
    projection_hidden_size: int = Field(512, gt=0, description="Hidden width of that MLP.")


class PromptTuningSpec(MethodBase):
    """Prompt Tuning (Lester et al. 2021): a soft prompt prepended to the input embeddings."""

    num_virtual_tokens: int = Field(20, gt=0, le=1024, description="Soft prompt length.")
    init: Literal["random", "vocab", "text"] = Field(
        "vocab", description="Initialise randomly, from sampled vocabulary embeddings, or from initText."
    )
    init_text: str | None = Field(None, description="Text whose token embeddings initialise the prompt.")

    @model_validator(mode="after")
    def _text_for_text_init(self) -> PromptTuningSpec:
        if self.init == "text" and not self.init_text:
            raise ValueError("initText is required when init is text")
        return self


class PTuningSpec(MethodBase):
    """P-Tuning (Liu et al. 2021): pseudo-token embeddings through an LSTM or MLP prompt encoder."""

    num_virtual_tokens: int = Field(20, gt=0, le=1024, description="Pseudo tokens.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="Prompt encoder.")
    encoder_hidden_size: int = Field(128, gt=0, description="Hidden width of the prompt encoder.")
    template: str | None = Field(
        None,
        description=(
            "Where pseudo tokens go around the input: [P] marks a pseudo token, {text} the input, anything "
            "else is discrete prompt text, e.g. '[P][P] {text} [P] It was'. Default: all prepended."
        ),
    )

    @model_validator(mode="after")
    def _template_matches_tokens(self) -> PTuningSpec:
        if self.template is not None:
            if self.template.count("{text}") != 1:
                raise ValueError("template must contain {text} exactly once")
            markers = self.template.count("[P]")
            if markers != self.num_virtual_tokens:
                raise ValueError(
                    f"template has {markers} [P] markers but numVirtualTokens is {self.num_virtual_tokens}"
                )
        return self


class VptSpec(MethodBase):
    """Visual Prompt Tuning (Jia et al. 2022): prompt tokens after [CLS] in a ViT."""

    num_tokens: int = Field(10, gt=0, le=1024, description="Prompt tokens (per layer when deep).")
    depth: Literal["shallow", "deep"] = Field("shallow", description="Input layer only, or fresh prompts per layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the prompt tokens.")


class MethodSpec(ApiModel):
    """Exactly one PEFT method."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "[" + ", ".join(f"has(self.{name})" for name in METHOD_NAMES) + "].filter(x, x).size() == 1",
            "exactly one method must be set: " + ", ".join(METHOD_NAMES),
        )
    )

    lora: LoraSpec | None = None
    adapter: AdapterSpec | None = None
    prefix_tuning: PrefixTuningSpec | None = None
    prompt_tuning: PromptTuningSpec | None = None
    p_tuning: PTuningSpec | None = None
    vpt: VptSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MethodSpec:
        chosen = [name for name in METHOD_NAMES if getattr(self, _snake(name)) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"exactly one method must be set (one of {', '.join(METHOD_NAMES)}); got "
                + (", ".join(chosen) if chosen else "none")
            )
        return self

    @property
    def name(self) -> str:
        """The camelCase name of the chosen method (e.g. "prefixTuning")."""
        return next(name for name in METHOD_NAMES if getattr(self, _snake(name)) is not None)

    @property
    def config(self) -> MethodBase:
        """The chosen method's hyperparameters."""
        return getattr(self, _snake(self.name))


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


# ------------------------------------------------------------------------------------------------ data


class DataSource(ApiModel):
    """One data set: a file or folder, local or s3://."""

    source: str = Field(min_length=1, description="Local path or s3:// URI of a file (or image folder).")
    format: Literal["jsonl", "csv", "parquet", "imagefolder"] | None = Field(
        None, description="Default: from the file extension; a folder is an image folder."
    )


class DataSpec(ApiModel):
    """Training and evaluation data and how to read it."""

    train: DataSource
    eval: DataSource | None = None
    text_field: str = Field("text", description="Input text (classification) or full text (causal LM).")
    text_pair_field: str | None = Field(None, description="Second segment for sentence-pair classification.")
    label_field: str = Field("label", description="Integer class label (classification).")
    prompt_field: str | None = Field(None, description="Prompt column for causal LM prompt/completion data.")
    completion_field: str | None = Field(None, description="Completion column for causal LM.")
    image_field: str = Field("image", description="Image path column (tabular image data sets).")
    max_length: int = Field(256, gt=0, le=131072, description="Tokens per example after truncation.")
    mask_prompt: bool = Field(True, description="Causal LM: compute the loss on the completion only.")
    label_names: list[str] | None = Field(
        None,
        description=(
            "Class names in label order: string labels in the data are mapped by name, integer labels are "
            "named; image folders' class folders must be among them."
        ),
    )

    @field_validator("label_names")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if any(not name for name in value):
            raise ValueError("class names must not be empty")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"class names must be unique: {', '.join(map(repr, repeated))} repeated")
        return value

    @model_validator(mode="after")
    def _prompt_and_completion_together(self) -> DataSpec:
        if (self.prompt_field is None) != (self.completion_field is None):
            raise ValueError("promptField and completionField must be set together")
        return self


# -------------------------------------------------------------------------------------------- training


class TrainingSpec(ApiModel):
    """The optimisation loop."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when maxSteps is set).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to run.")
    learning_rate: float = Field(3e-4, gt=0, le=10, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    micro_batch_size: int = Field(8, gt=0, description="Examples per process per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro batches per optimizer step.")
    gradient_clipping: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 disables).")
    seed: int = Field(42, ge=0, description="Seeds model init, data order and dropout.")
    eval_interval: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    checkpoint_interval: int = Field(100, ge=0, description="Checkpoint every N steps (0: only at the end).")
    log_interval: int = Field(10, gt=0, description="Log metrics every N steps.")
    checkpoints_kept: int = Field(2, gt=0, description="Complete checkpoints kept; older ones are deleted.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision; auto is bf16 on GPUs that support it, else fp32."
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description=(
            "auto: continue this job's own training lineage from its latest checkpoint; a checkpoint of a "
            "different configuration is refused. never: start over, discarding the job's checkpoints and "
            "starting a new MLflow run."
        ),
    )


# ------------------------------------------------------------------------------------------- deepspeed

Offload = Literal["none", "cpu", "nvme"]


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO settings; `config` is merged last for anything not modelled here."""

    zero_stage: int = Field(3, ge=0, le=3, description="ZeRO stage 0-3; 3 shards the frozen backbone too.")
    offload_optimizer: Offload = Field("none", description="Where optimizer state lives.")
    offload_param: Offload = Field("none", description="Where parameters live (ZeRO-3 only).")
    nvme_path: str | None = Field(None, description="Local NVMe folder for nvme offload.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the generated one.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @model_validator(mode="after")
    def _offload_rules(self) -> DeepSpeedSpec:
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError("offloadParam needs zeroStage 3")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offloadOptimizer needs zeroStage 1, 2 or 3")
        if "nvme" in (self.offload_param, self.offload_optimizer) and not self.nvme_path:
            raise ValueError("nvmePath is required for nvme offload")
        return self


# --------------------------------------------------------------------------------------------- workers


class EnvVar(ApiModel):
    """An environment variable: a plain value, or a reference (secretKeyRef, configMapKeyRef, fieldRef)."""

    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
        None, json_schema_extra=preserve_unknown("A Kubernetes EnvVarSource, e.g. secretKeyRef.")
    )

    @model_validator(mode="after")
    def _no_inline_secret(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        if self.value and SECRET_ENV.search(self.name):
            raise ValueError(
                f"{self.name} looks like a credential: pass it with valueFrom.secretKeyRef, never inline"
            )
        return self


class WorkersSpec(ApiModel):
    """The gang of worker pods: one pod per replica, processesPerWorker ranks in each."""

    replicas: int = Field(1, ge=1, le=1024, description="Worker pods (nodes).")
    processes_per_worker: int = Field(1, ge=1, le=64, description="Ranks per pod (usually one per GPU).")
    gpus_per_worker: int = Field(0, ge=0, le=64, description="nvidia.com/gpu requested per pod.")
    resources: dict[str, dict[str, str | int]] = Field(
        default_factory=dict, description="Kubernetes requests/limits for the trainer container."
    )
    image: str | None = Field(None, description="Trainer image; default: the operator's configured image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    affinity: dict[str, Any] | None = Field(None, json_schema_extra=preserve_unknown("A Kubernetes Affinity."))
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the worker pods (a raw priority value is refused by admission)."
    )
    service_account_name: str | None = Field(
        None, description="Pod service account; workers need no Kubernetes API rights."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment for the trainer.")
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    shared_memory_size: str = Field("1Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")

    @field_validator("resources")
    @classmethod
    def _requests_and_limits(cls, value: dict[str, dict[str, str | int]]) -> dict[str, dict[str, str | int]]:
        unknown = set(value) - {"requests", "limits"}
        if unknown:
            raise ValueError(f"only requests and limits are allowed, not {', '.join(sorted(unknown))}")
        return value

    @property
    def world_size(self) -> int:
        return self.replicas * self.processes_per_worker


# -------------------------------------------------------------------------------- tracking and output


class TrackingSpec(ApiModel):
    """MLflow. Without a URI, the operator's default is used; locally, an embedded sqlite store."""

    mlflow_tracking_uri: str | None = Field(None, description="e.g. http://mlflow.mlops:5000")
    experiment: str = Field("peftjob", min_length=1)
    run_name: str | None = Field(None, description="Default: the PEFTJob's name.")
    tags: dict[str, str] = Field(default_factory=dict)
    system_metrics: bool = Field(False, description="Log CPU/GPU/memory metrics with the run.")

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_credentials_in_uri(cls, value: str | None) -> str | None:
        if value and re.match(r"^[a-z+]+://[^/@]+:[^/@]+@", value):
            raise ValueError(
                "credentials must not be inline in the URI: use MLFLOW_TRACKING_USERNAME/PASSWORD from a Secret"
            )
        return value


class SecretRef(ApiModel):
    """Keys of a Kubernetes Secret in the job's namespace."""

    name: str = Field(min_length=1, max_length=253)
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", min_length=1)
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1)


INLINE_CREDENTIAL_FIELDS = {
    "accessKey",
    "accessKeyId",
    "secretKey",
    "secretAccessKey",
    "awsAccessKeyId",
    "awsSecretAccessKey",
    "password",
    "token",
    "sessionToken",
}


class OutputSpec(ApiModel):
    """Where checkpoints and the final adapter go."""

    uri: str = Field("peftjob-output", min_length=1, description="s3://bucket/prefix or a local folder.")
    s3_endpoint_url: str | None = Field(None, description="For MinIO and other S3-compatible stores.")
    credentials_secret: SecretRef | None = Field(
        None, description="Secret with the S3 key pair; credentials are never accepted inline."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            inline = sorted(INLINE_CREDENTIAL_FIELDS & set(data))
            if inline:
                raise ValueError(
                    f"inline credentials ({', '.join(inline)}) are not allowed: put them in a Secret and "
                    "reference it with credentialsSecret"
                )
        return data

    @field_validator("uri")
    @classmethod
    def _no_credentials_in_uri(cls, value: str) -> str:
        if re.match(r"^[a-z0-9+]+://[^/@]+:[^/@]+@", value):
            raise ValueError("credentials must not be inline in the URI: use credentialsSecret")
        return value


class RunPolicy(ApiModel):
    """Kubeflow-style run policy."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Gang restarts after retryable failures.")
    active_deadline_seconds: int | None = Field(None, gt=0, description="Fail the job after this long.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the finished job after this.")
    suspend: bool = Field(False, description="Remove the pods and keep the checkpoint; false resumes.")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running",
        description="Pods deleted once the job finishes: None keeps all, Running deletes those still running "
        "(stragglers of a finished gang, or survivors of a failed one stuck in a collective, would hold their "
        "GPUs), All deletes every pod.",
    )


class SchedulingSpec(ApiModel):
    """Gang scheduling hints."""

    scheduler_name: str | None = Field(None, description="e.g. volcano or a coscheduling scheduler.")
    queue_name: str | None = Field(None, description="Kueue LocalQueue (kueue.x-k8s.io/queue-name label).")


# -------------------------------------------------------------------------------------------- the job


class PEFTJobSpec(ApiModel):
    """What the user wants: a PEFT method on a frozen backbone, trained by a gang of DeepSpeed workers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *(
                    {
                        "rule": f"!has(self.method.{name}) || self.model.task in {list(tasks)}",
                        "message": f"method {name} supports tasks {', '.join(tasks)}",
                    }
                    for name, tasks in METHOD_TASKS.items()
                    if len(tasks) < 3
                ),
                {
                    "rule": "!has(self.data.labelNames) || self.model.task != 'causal-lm'",
                    "message": "data.labelNames is only for classification tasks",
                },
                {
                    "rule": "!has(self.data.labelNames) || !has(self.model.numLabels) "
                    "|| size(self.data.labelNames) == self.model.numLabels",
                    "message": "data.labelNames must name exactly model.numLabels classes",
                },
            ]
        }
    )

    model: ModelSpec
    method: MethodSpec
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)

    @model_validator(mode="after")
    def _method_fits_task(self) -> PEFTJobSpec:
        tasks = METHOD_TASKS[self.method.name]
        if self.model.task not in tasks:
            raise ValueError(
                f"method.{self.method.name} does not support model.task {self.model.task} "
                f"(supported: {', '.join(tasks)})"
            )
        return self

    @model_validator(mode="after")
    def _label_names_fit_labels(self) -> PEFTJobSpec:
        names = self.data.label_names
        if names is None:
            return self
        if self.model.task == "causal-lm":
            raise ValueError("data.labelNames is only for classification tasks: task causal-lm has no classes")
        if self.model.num_labels is not None and len(names) != self.model.num_labels:
            raise ValueError(
                f"data.labelNames names {len(names)} classes but model.numLabels is {self.model.num_labels}"
            )
        return self


class ObjectMeta(ApiModel):
    """The part of metadata peftjob reads; anything else Kubernetes puts there is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    namespace: str | None = None
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _fits_pod_names(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(
                "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)"
            )
        return value


class PEFTJob(ApiModel):
    """A PEFTJob document as the user writes it (status is the operator's and never read from input)."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["peft.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PEFTJob"]
    metadata: ObjectMeta
    spec: PEFTJobSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _names_fit(self) -> PEFTJob:
        longest = worker_pod_name(self.metadata.name, self.spec.workers.replicas - 1)
        if len(longest) > DNS_LABEL_MAX:
            raise ValueError(
                f"metadata.name: too long: pod name {longest!r} would be {len(longest)} characters, "
                f"Kubernetes allows {DNS_LABEL_MAX}"
            )
        return self


def worker_pod_name(job_name: str, index: int) -> str:
    """The stable name (and hostname) of a worker pod."""
    return f"{job_name}-worker-{index}"
