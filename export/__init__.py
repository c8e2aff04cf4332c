"""ONNX export of lmref models and its validation in onnxruntime.

    export.exporter     export_onnx(config, params, out), export_checkpoint, export_preset;
                        OPSET (18), the directory layout (model.onnx, config.json, export.json)
    export.decoder      OnnxDecoder: impl_torch's Transformer behind the flat ONNX interface
                        (input_ids, attention_mask, position_ids, past_key_values.{i}.key|value
                        -> logits, present.{i}.key|value; a MoE layer's router_logits.{i},
                        selected_experts.{i}), concat KV cache, padding as positions
    export.features     FEATURES (the torch twin's, minus what the export cannot express) and
                        check_exportable(config), which refuses the rest by feature name
    export.bundle       open_bundle(out): an exported directory, checked (paths inside it, every
                        file's sha256 as export.json records it); reference_params
    export.runtime      open_session (provider asserted), DecoderSession (outputs, step, prefill_and_decode;
                        every input checked first, with spec.inputs' messages)
    export.validate     validate(bundle, params, providers): the left-padded prefill + decode check;
                        check_weights(bundle, params): every initializer against a fresh export
    export.routing      a mixture of experts in validate: tokens whose routing has a margin, and
                        the graph's chosen experts (its selected_experts.{i} outputs) vs the golden's
    export.generate     generate(session, prompt, n): sampling over the graph's KV cache
    export.onnx_adapter OnnxAdapter: `pytest conformance/ --impl onnx`

Importing this package imports nothing heavy: torch, onnx and onnxruntime (the `torch` and
`onnx` extras) are imported by the modules that need them.
"""
