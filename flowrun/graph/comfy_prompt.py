"""The ComfyUI API-format prompt of a resolved cell: {"id": {"class_type": ..., "inputs": {...}}}, links as
[node_id, output_index].

Output provenance carries it (ComfyUI opens such an image as a graph), and `flowrun export` writes it.
flowrun's node and field names are ComfyUI's, so a resolved cell maps one to one, for the node types
listed in CORE_NODES (plugins' nodes may not exist in ComfyUI, and then there is no prompt).
"""

from __future__ import annotations

import json
from typing import Any

CORE_NODES = frozenset({
    "CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "CLIPSetLastLayer", "ConditioningCombine",
    "ConditioningConcat", "ConditioningSetArea", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy",
    "VAEEncode", "VAEDecode", "KSampler", "KSamplerAdvanced", "LoadImage", "ImageScale", "SaveImage",
    "EmptyImage", "ImageInvert", "ImageBlend", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveBoolean",
    # where and when a conditioning applies
    "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningSetMask",
    "ConditioningSetTimestepRange", "ConditioningZeroOut", "ConditioningAverage",
    "PreviewImage", "RescaleCFG", "VAEDecodeTiled", "VAEEncodeTiled",
    # latent_ops
    "LatentComposite", "LatentCompositeMasked", "LatentBlend", "LatentAdd", "LatentSubtract", "LatentMultiply",
    "LatentInterpolate", "LatentBatch", "LatentFromBatch", "RepeatLatentBatch", "LatentCrop", "LatentFlip",
    "LatentRotate", "LatentBatchSeedBehavior",
    # mask
    "ImageToMask", "MaskToImage", "SolidMask", "InvertMask", "CropMask", "GrowMask", "FeatherMask",
    "MaskComposite", "LoadImageMask",
    # image_ops
    "ImageSharpen", "ImageBlur", "ImageQuantize", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageCrop",
    "ImageBatch", "ImageCompositeMasked", "ImagePadForOutpaint",
    # animation (comfy_extras/nodes_images.py)
    "SaveAnimatedWEBP", "SaveAnimatedPNG",
    "SetLatentNoiseMask",
    # custom sampling (comfy_extras/nodes_custom_sampler.py, nodes_model_advanced.py)
    "KSamplerSelect", "BasicScheduler", "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler",
    "SDTurboScheduler", "SplitSigmas", "SplitSigmasDenoise", "FlipSigmas", "RandomNoise", "DisableNoise",
    "CFGGuider", "BasicGuider", "DualCFGGuider", "SamplerCustom", "SamplerCustomAdvanced", "SamplerEulerAncestral",
    "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE", "SamplerLMS", "ModelSamplingDiscrete",
    "CheckpointLoader", "VAELoader", "CLIPLoader", "DualCLIPLoader", "UNETLoader",
    # image prompts (nodes.py)
    "CLIPVisionLoader", "CLIPVisionEncode", "unCLIPCheckpointLoader", "unCLIPConditioning", "StyleModelLoader",
    "StyleModelApply", "GLIGENLoader", "GLIGENTextBoxApply",
    "LoraLoaderModelOnly", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "HypernetworkLoader",
    # ControlNet (nodes.py; Canny: comfy_extras/nodes_canny.py)
    "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced", "Canny",
    # model merging (comfy_extras/nodes_model_merging.py)
    "ModelMergeSimple", "ModelMergeBlocks", "CheckpointSave",
    # model patches (comfy_extras/nodes_freelunch.py, nodes_model_downscale.py, nodes_model_advanced.py,
    # nodes_pag.py, nodes_sag.py)
    "FreeU", "FreeU_V2", "PatchModelAddDownscale", "ModelSamplingContinuousEDM", "PerturbedAttentionGuidance",
    "SelfAttentionGuidance",
    # flow models (comfy_extras/nodes_model_advanced.py, nodes_sd3.py)
    "ModelSamplingSD3", "ModelSamplingAuraFlow", "ModelSamplingFlux", "EmptySD3LatentImage", "TripleCLIPLoader",
    "CLIPTextEncodeSD3",
    # inpainting and edit conditioning (nodes.py, comfy_extras/nodes_ip2p.py, nodes_differential_diffusion.py)
    "VAEEncodeForInpaint", "InpaintModelConditioning", "InstructPixToPixConditioning", "DifferentialDiffusion",
    # upscale models (comfy_extras/nodes_upscale_model.py)
    "UpscaleModelLoader", "ImageUpscaleWithModel",
    # Flux (comfy_extras/nodes_flux.py, nodes_edit_model.py)
    "CLIPTextEncodeFlux", "FluxGuidance", "ReferenceLatent", "FluxKontextImageScale",
})


def api_prompt(instances: dict[str, Any], node_ids: list[str]) -> dict[str, Any] | None:
    """The API-format graph of `node_ids` (resolved instances of one cell), or None if a node has no
    ComfyUI counterpart."""
    prompt: dict[str, Any] = {}
    for nid in node_ids:
        inst = instances[nid]
        nd = inst.node_def
        if nd.type_name not in CORE_NODES:
            return None
        inputs: dict[str, Any] = dict(inst.literals)
        for name, link in inst.links.items():
            src = instances[link.node].node_def
            inputs[name] = [link.node, list(src.outputs).index(link.output)]
        prompt[nid] = {"class_type": nd.type_name, "inputs": inputs, "_meta": {"title": nid}}
    return prompt


def api_prompt_text(instances: dict[str, Any], node_ids: list[str]) -> str | None:
    """api_prompt as canonical JSON (sorted keys, so equal graphs give equal bytes), or None."""
    prompt = api_prompt(instances, node_ids)
    return None if prompt is None else json.dumps(prompt, sort_keys=True)
