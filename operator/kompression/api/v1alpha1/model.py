"""spec.model: the model to compress and how to load it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import (
    IMPORT_REF_PATTERN,
    MAX_DIMENSION,
    MAX_INPUT_ELEMENTS,
    ApiModel,
    StorageUri,
    shape_elements_cel,
    uri_rules,
)


class ModelInput(ApiModel):
    """One input tensor of the model."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="Name of the input, used for the ONNX and TensorRT input bindings."
    )
    shape: list[Annotated[int, Field(ge=-1, le=MAX_DIMENSION)]] = Field(
        min_length=1,
        max_length=8,
        description=(
            f"Shape of the input; -1 marks a dynamic dimension such as the batch size. A dimension is at "
            f"most {MAX_DIMENSION} (2^20, above a minute of 16 kHz audio samples), and the shape at most "
            f"{MAX_INPUT_ELEMENTS} (2^28) elements with each -1 counted as 1."
        ),
    )
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32"] = Field(
        "float32", description="Element type of the input tensor."
    )

    __rules__ = (
        Rule(
            cel="self.shape.all(d, d != 0)",
            message="shape dimensions must be positive, or -1 for a dynamic dimension; 0 is not allowed",
            field_path=".shape",
        ),
        Rule(
            cel=f"{shape_elements_cel('self.shape')} <= {float(MAX_INPUT_ELEMENTS)}",
            message=(
                f"the shape holds more than {MAX_INPUT_ELEMENTS} (2^28) elements with each -1 counted as 1; "
                "the worker builds example inputs of this shape"
            ),
            field_path=".shape",
        ),
    )


ModelFormat = Literal["TorchExport", "TorchScript", "ONNX", "HuggingFace", "SafeTensors"]


class ModelSource(ApiModel):
    """The model to compress and how to load it."""

    uri: StorageUri = Field(
        description=(
            "Where the model is stored: s3://BUCKET/PATH, gs://BUCKET/PATH, az://CONTAINER/PATH, "
            "pvc://CLAIM/PATH (a PersistentVolumeClaim in the job's namespace, mounted read-only) or "
            "file://PATH (local runs); the path names the file, or the folder for HuggingFace."
        )
    )
    format: ModelFormat = Field(
        description=(
            "How the model is serialized. TorchExport is a torch.export .pt2 archive, TorchScript a "
            "scripted or traced module, ONNX an .onnx file, HuggingFace a transformers model folder, "
            "and SafeTensors a state dict in safetensors format loaded into `architecture`."
        )
    )
    architecture: Annotated[str, StringConstraints(pattern=IMPORT_REF_PATTERN, max_length=253)] | None = Field(
        None,
        description=(
            "For SafeTensors only: the class or factory to build before loading the weights, as "
            "`module.path:Name`, for example `torchvision.models:resnet18`. It must be a model builder "
            "under a module the cluster allows (Helm value worker.architectureModules): in transformers a "
            "model class (FooModel, FooForTask, the Auto*Model* classes), in torchvision.models and timm a "
            "model factory or class, never a loader, registry, config or tokenizer."
        ),
    )
    architectureArguments: dict[str, Any] | None = Field(
        None,
        description=(
            "Keyword arguments passed to `architecture` when it is called, for example {num_classes: 10}. "
            "Arguments that fetch weights or code (pretrained, weights, weights_backbone, checkpoint_path, "
            "pretrained_cfg, trust_remote_code, ...) are refused unless null or false: the weights come "
            "from `uri`."
        ),
    )
    inputs: list[ModelInput] = Field(
        min_length=1, max_length=8, description="The model's inputs, in the order its forward() takes them."
    )
    output: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)] | None = Field(
        None,
        description=(
            "For HuggingFace only: which field of the model's output object the pipeline compresses and "
            "measures, for example `logits`, `last_hidden_state` or `pooler_output`. Unset means `logits` "
            "for a model with a task head (sequence or image classification) and `last_hidden_state` for a "
            "bare encoder (BERT-class, ViT). A name the model does not return is refused with the list of "
            "names it does."
        ),
    )
    trustTorchScriptCode: bool = Field(
        False,
        description=(
            "Required, and only allowed, with format TorchScript. A TorchScript archive is a program: "
            "its scripted forward() runs in the worker, next to the job's credentials, and can read "
            "files (torch.from_file). Set true only for archives you would run as code, as with "
            "transformers' trust_remote_code; prefer TorchExport, whose archives the worker vets."
        ),
    )

    __rules__ = (
        *uri_rules(),
        Rule(
            cel="self.format != 'TorchScript' || (has(self.trustTorchScriptCode) && self.trustTorchScriptCode)",
            message="format TorchScript runs the archive's code in the worker: set trustTorchScriptCode: true "
            "if you trust it as code, or save the model with torch.export.save (format TorchExport)",
            field_path=".trustTorchScriptCode",
        ),
        Rule(
            cel="!has(self.trustTorchScriptCode) || !self.trustTorchScriptCode || self.format == 'TorchScript'",
            message="trustTorchScriptCode only applies to format TorchScript; remove it for other formats",
            field_path=".trustTorchScriptCode",
        ),
        Rule(
            cel="self.format != 'SafeTensors' || has(self.architecture)",
            message="format SafeTensors needs `architecture` (module.path:Name) to build the model the weights load into",
            field_path=".architecture",
        ),
        Rule(
            cel="!has(self.architecture) || self.format == 'SafeTensors'",
            message="`architecture` is only used with format SafeTensors; remove it for other formats",
            field_path=".architecture",
        ),
        Rule(
            cel="!has(self.output) || self.format == 'HuggingFace'",
            message="`output` is only used with format HuggingFace, whose models return several named outputs; "
            "other formats return one tensor, so remove it",
            field_path=".output",
        ),
        Rule(
            cel="!has(self.architectureArguments) || has(self.architecture)",
            message="`architectureArguments` needs `architecture`",
            field_path=".architectureArguments",
        ),
    )
