// Run nsfwjs's MobileNetV2 in TF.js (pure JavaScript, CPU backend) on a fixed input and print activations.
//
//   node benchmarks/icons/tfjs_activations.js TFJS_DIR NSFWJS_DIR INPUT.f32 N H W LAYER [LAYER ...]
//
// TFJS_DIR and NSFWJS_DIR are the unpacked @tensorflow/tfjs and nsfwjs packages (fetch.sh); INPUT.f32 holds N·H·W·3
// little-endian float32 pixels in NHWC order. Prints one JSON object: layer → {shape, data (base64 float32)}.
// tests/models/test_mobilenet_v2.py compares these with the PyTorch port.
const path = require("path");
const fs = require("fs");

async function main() {
  const [tfjsDir, nsfwjsDir, inputFile, n, h, w, ...layers] = process.argv.slice(2);
  const tf = require(path.resolve(tfjsDir, "dist/tf.min.js"));
  await tf.setBackend("cpu");
  const modelDir = path.resolve(nsfwjsDir, "dist/models/mobilenet_v2");
  const modelJson = require(path.join(modelDir, "model.min.js"));
  const shard = require(path.join(modelDir, "group1-shard1of1.min.js"));
  const bytes = Buffer.from(shard, "base64");
  const weightData = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const model = await tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: modelJson.modelTopology,
      weightSpecs: modelJson.weightsManifest[0].weights,
      weightData,
    })
  );
  const raw = fs.readFileSync(inputFile);
  const pixels = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor4d(pixels, [Number(n), Number(h), Number(w), 3]);
  // The input layer is fixed at 224 × 224 px (batch_input_shape in the topology).
  const probe = tf.model({ inputs: model.inputs, outputs: layers.map((name) => model.getLayer(name).output) });
  let outputs = probe.predict(input);
  if (!Array.isArray(outputs)) outputs = [outputs];
  const result = {};
  layers.forEach((name, i) => {
    const data = outputs[i].dataSync();
    result[name] = { shape: outputs[i].shape, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64") };
  });
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
