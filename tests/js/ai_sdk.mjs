// The Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/openai-compatible`), unchanged, against the gateway's
// root /v1 family. Both providers validate every answer against their own schemas (zod), so an answer that strays
// from OpenAI's document fails here as "Invalid JSON response".
// Usage: node tests/js/ai_sdk.mjs <base_url ending in /v1> <case>
// Prints one JSON line: {ok: true, images: [{png, bytes, sha}], usage, metadata} or {ok: false, error}.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateImage } from "ai";

const [baseURL, which, inputPath] = process.argv.slice(2);
if (!baseURL || !which) {
  console.error("usage: node ai_sdk.mjs <base_url> <case> [input.png]");
  process.exit(2);
}
const openai = createOpenAI({ apiKey: "sk-anything", baseURL });
const compatible = createOpenAICompatible({ name: "gateway", apiKey: "sk-anything", baseURL });
const input = () => new Uint8Array(readFileSync(inputPath));

const cases = {
  // dall-e-3: the SDK asks for response_format b64_json, one image per call.
  "dall-e-3": () => generateImage({ model: openai.image("dall-e-3"), prompt: "a lighthouse", size: "1024x1024" }),
  // A GPT image model: the SDK sends no response_format (OpenAI answers base64), and up to 10 images per call.
  "gpt-image-1": () =>
    generateImage({ model: openai.image("gpt-image-1"), prompt: "a lighthouse", n: 2, size: "64x64" }),
  // An edit: the SDK posts multipart to /images/edits.
  "gpt-image-1-edit": () =>
    generateImage({
      model: openai.image("gpt-image-1"),
      prompt: { text: "make it night", images: [input()] },
      size: "64x64",
    }),
  // A model of ours through the generic OpenAI-compatible provider; seed and steps as its provider options
  // (the documented /v1 extensions).
  tiny: () =>
    generateImage({
      model: compatible.imageModel("tiny"),
      prompt: "a lighthouse",
      size: "64x64",
      providerOptions: { gateway: { seed: 7, steps: 2 } },
    }),
  "tiny-edit": () =>
    generateImage({
      model: compatible.imageModel("tiny"),
      prompt: { text: "make it night", images: [input()] },
      size: "64x64",
    }),
};

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
try {
  const result = await cases[which]();
  const images = result.images.map((image) => {
    const bytes = Buffer.from(image.uint8Array);
    return {
      png: bytes.subarray(0, 4).equals(PNG),
      bytes: bytes.length,
      sha: createHash("sha256").update(bytes).digest("hex"),
    };
  });
  console.log(
    JSON.stringify({
      ok: true,
      images,
      usage: result.usage ?? null,
      metadata: result.providerMetadata ?? null,
      warnings: result.warnings ?? [],
    }),
  );
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: `${error?.name}: ${error?.message}`, cause: `${error?.cause ?? ""}` }));
}
