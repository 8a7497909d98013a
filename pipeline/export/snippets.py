"""Android (Kotlin) and iOS (Swift) snippets for the export folders' README.md files.

Written against the public sources of the APIs they call (TFLite's Java `Interpreter`,
LiteRT-LM's Kotlin `Engine`/`Session` and Swift `Engine`/`Conversation`); not compiled here,
and each README says so.
"""

from __future__ import annotations

NOT_COMPILED = ("These snippets follow the current public APIs but were not compiled or run "
                "on a device here.")


def text_model_snippets(file_name: str, threads: int) -> str:
    """Markdown: calling the one-shot text model from Kotlin (select-TF-ops AAR) and Swift
    (select-TF-ops pod), with the thread count the benchmark used (`bench export`)."""
    return f"""## Android (Kotlin)

{NOT_COMPILED}

```kotlin
// build.gradle.kts
//   implementation("org.tensorflow:tensorflow-lite:2.16.1")
//   implementation("org.tensorflow:tensorflow-lite-select-tf-ops:2.16.1")  // Flex delegate,
//   added by the Interpreter on its own when the model has select TF ops
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteOrder

fun complete(model: File /* {file_name} */, prompt: String): String =
    Interpreter(model, Interpreter.Options().setNumThreads({threads})).use {{ interpreter ->
        // A scalar string input takes the UTF-8 bytes of the prompt.
        val inputs = mapOf<String, Any>("prompt" to prompt.toByteArray(Charsets.UTF_8))
        interpreter.runSignature(inputs, HashMap<String, Any>(), "serving_default")
        // A scalar string output cannot be copied into a Java array: read the tensor's bytes
        // (TFLite string layout: count, offsets, total length, then the bytes; little-endian).
        val buffer = interpreter.getOutputTensorFromSignature("text", "serving_default")
            .asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN)
        val start = buffer.getInt(4)
        val end = buffer.getInt(8)
        val bytes = ByteArray(end - start)
        buffer.position(start)
        buffer.get(bytes)
        String(bytes, Charsets.UTF_8)   // the prompt followed by the generated text
    }}
```

## iOS (Swift)

{NOT_COMPILED}

```ruby
# Podfile: the select-TF-ops pod links the Flex delegate (add -force_load for it, as its
# documentation says); released from 2.14.0 to 2.17.0
pod 'TensorFlowLiteSwift', '~> 2.16.0'
pod 'TensorFlowLiteSelectTfOps', '~> 2.16.0'
```

```swift
import TensorFlowLite

func complete(modelPath: String /* {file_name} */, prompt: String) throws -> String {{
    var options = Interpreter.Options()
    options.threadCount = {threads}
    let interpreter = try Interpreter(modelPath: modelPath, options: options)
    let runner = try interpreter.signatureRunner(with: "serving_default")
    try runner.allocateTensors()
    try runner.invoke(with: ["prompt": Data(prompt.utf8)])
    // A scalar string tensor: count, offsets, total length, then the bytes (little-endian).
    let data = try runner.output(named: "text").data
    let start = Int(data.withUnsafeBytes {{ $0.load(fromByteOffset: 4, as: Int32.self) }})
    let end = Int(data.withUnsafeBytes {{ $0.load(fromByteOffset: 8, as: Int32.self) }})
    return String(decoding: data[start..<end], as: UTF8.self)  // prompt + generated text
}}
```
"""


def bundle_snippets(file_name: str, context: int) -> str:
    """Markdown: streaming the `.litertlm` bundle from Kotlin and Swift with LiteRT-LM."""
    return f"""## Android (Kotlin)

{NOT_COMPILED} GPT-2 has no chat template, so the snippets use a plain session (the prompt
goes in as is), as `python -m pipeline` does with `create_session(apply_prompt_template=False)`.

```kotlin
// build.gradle.kts: implementation("com.google.ai.edge.litertlm:litertlm-android:<version>")
import com.google.ai.edge.litertlm.*

fun stream(modelPath: String /* {file_name} */, cacheDir: String, prompt: String,
           onPiece: (String) -> Unit) {{
    val config = EngineConfig(modelPath = modelPath, backend = Backend.CPU(), cacheDir = cacheDir)
    Engine(config).use {{ engine ->
        engine.initialize()               // seconds on first launch: keep off the main thread
        engine.createSession(SessionConfig()).use {{ session ->
            session.generateContentStream(listOf(InputData.Text(prompt)),
                object : ResponseCallback {{
                    override fun onNext(response: String) = onPiece(response)
                }})
        }}
    }}
}}
```

## iOS (Swift)

{NOT_COMPILED} LiteRT-LM's Swift package (`LiteRTLM`, iOS 15+) is an early preview.

```swift
import LiteRTLM  // Swift Package: https://github.com/google-ai-edge/LiteRT-LM, product "LiteRTLM"

func complete(modelPath: String /* {file_name} */, prompt: String) async throws -> String {{
    let config = try EngineConfig(modelPath: modelPath, backend: .cpu(),
                                  cacheDir: NSTemporaryDirectory())
    let engine = Engine(engineConfig: config)
    try await engine.initialize()
    let conversation = try await engine.createConversation()
    var text = ""
    for try await piece in conversation.sendMessageStream(Message(prompt)) {{
        text += piece.toString
    }}
    conversation.close()
    return text
}}
```

The bundle's context is {context} tokens (prompt and generated text together).
"""
