"""ONNX export of lmref models and its validation in onnxruntime.

    export.exporter     export_onnx(config, params, out), export_checkpoint, export_preset;
                        OPSET (18), the directory layout (model.onnx, config.json, export.json)
    export.fusable      the graph rewritten into patterns onnxruntime fuses (RMSNorm as a Div)
    export.checks       Check, FeaturesCheck: one comparison as validate-onnx prints it
    export.decoder      OnnxDecoder: impl_torch's Transformer behind the flat ONNX interface
                        (input_ids, attention_mask, position_ids, past_key_values.{i}.key|value
                        -> logits, present.{i}.key|value; a MoE layer's router_logits.{i},
                        selected_experts.{i}), concat KV cache, padding as positions
    export.vision_graphs  a vision tower's three graphs: vision.onnx (tower and projector),
                        embed.onnx (the token lookup), the decoder taking inputs_embeds
    export.multimodal   MultimodalSession: the three graphs chained (the image rows merged into
                        the lookup), behind DecoderSession's interface; open_chain(bundle)
    export.features     FEATURES (the torch twin's, minus what the export cannot express) and
                        check_exportable(config), which refuses the rest by feature name
    export.bundle       open_bundle(out): an exported directory, checked (paths inside it, every
                        file's sha256 as export.json records it); reference_params
    export.runtime      open_session (provider asserted), DecoderSession (outputs, step, prefill_and_decode;
                        every input checked first, with spec.inputs' messages)
    export.validate     validate(bundle, params, providers): the left-padded prefill + decode check
                        (with images: export.validate_vision);
                        check_weights(bundle, params): every initializer against a fresh export
    export.routing      a mixture of experts in validate: tokens whose routing has a margin, and
                        the graph's chosen experts (its selected_experts.{i} outputs) vs the golden's
    export.generate     generate(session, prompt, n, pixel_values=None): sampling over the graph's KV cache
    export.onnx_adapter OnnxAdapter: `pytest conformance/ --impl onnx`
    export.reweight     template(config, params): one trace of a config, re-weighted for other
                        weights (the parameters' initializers rewritten, then the exporter's optimizer)

Importing this package imports nothing heavy: torch, onnx and onnxruntime (the `torch` and
`onnx` extras) are imported by the modules that need them.
"""
