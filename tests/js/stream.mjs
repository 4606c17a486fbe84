// The official openai JS SDK, unchanged, streaming partial images from the gateway.
// Usage: node tests/js/stream.mjs <base_url ending in /v1>
// Prints one JSON line per event: its type, partial_image_index, and whether its image is a PNG.
import OpenAI from "openai";

const baseURL = process.argv[2];
if (!baseURL) {
  console.error("usage: node stream.mjs <base_url>");
  process.exit(2);
}
const client = new OpenAI({ apiKey: "sk-anything", baseURL, maxRetries: 0, timeout: 60_000 });
const stream = await client.images.generate({
  model: "tiny",
  prompt: "a lighthouse at dusk",
  size: "64x64",
  stream: true,
  partial_images: 2,
});
const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
for await (const event of stream) {
  const image = Buffer.from(event.b64_json, "base64");
  console.log(
    JSON.stringify({
      type: event.type,
      index: event.partial_image_index ?? null,
      png: image.subarray(0, 4).equals(PNG),
      bytes: image.length,
    }),
  );
}
