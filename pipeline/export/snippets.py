"""Android (Kotlin) and iOS (Swift) snippets for the export folders' README.md files.

Written against the public sources of the APIs they call (TFLite's Java `Interpreter`,
LiteRT-LM's Kotlin `Engine`/`Session` and Swift `Engine`/`Conversation`); not compiled here,
and each README says so.
"""

from __future__ import annotations

NOT_COMPILED = ("These snippets follow the current public APIs but were not compiled or run "
                "on a device here.")


def text_model_snippets(file_name: str) -> str:
    """Markdown: calling the one-shot text model from Kotlin with the select-TF-ops AAR."""
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
    Interpreter(model).use {{ interpreter ->
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

iOS has no select-TF-ops (Flex) pod in current releases: on iOS use the `.litertlm` bundle.
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
