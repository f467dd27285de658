//! Chat templates: prompts rendered through a model's own `tokenizer.chat_template` (Jinja, as
//! transformers' `apply_chat_template(..., add_generation_prompt=True)` renders it), with the
//! demonstrations either folded into one user turn or given as user/assistant exchanges.

use anyhow::{Result, anyhow};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A model's chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// Renders `messages` followed by the assistant's generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        env.set_syntax(syntax);
        // A model's template is code from its files: bounded like a task's (many-shot multi-turn
        // prompts take a few hundred thousand steps).
        env.set_fuel(Some(200_000_000));
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source)
            .map_err(|e| anyhow!("the model's chat template does not parse: {e}"))?;
        let t = env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        t.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| anyhow!("the model's chat template failed to render: {e}"))
    }
}

/// The messages of a prompt: `folded` puts description, demonstrations and query in one user turn
/// (`plain` is that text); otherwise each demonstration is a user turn and an assistant turn with
/// its answer, and the description opens the first user turn.
pub fn messages(
    plain: &str,
    description: &str,
    demos: &[(&str, Option<&str>)],
    query: &str,
    multiturn: bool,
) -> Vec<Message> {
    let user = |content: String| Message {
        role: "user".into(),
        content,
    };
    if !multiturn || demos.is_empty() {
        return vec![user(plain.to_string())];
    }
    let mut out = Vec::with_capacity(2 * demos.len() + 1);
    for (i, (input, answer)) in demos.iter().enumerate() {
        let lead = if i == 0 { description } else { "" };
        out.push(user(format!("{lead}{input}")));
        out.push(Message {
            role: "assistant".into(),
            content: answer.unwrap_or_default().to_string(),
        });
    }
    out.push(user(query.to_string()));
    out
}

/// The messages a chat endpoint receives: the description as the system message (when there is
/// one), then as [`messages`] gives them without it — one user turn holding the rest of `plain`
/// (the demonstrations and the query), or each demonstration as a user and an assistant turn.
pub fn api_messages(
    plain: &str,
    description: &str,
    demos: &[(&str, Option<&str>)],
    query: &str,
    multiturn: bool,
) -> Vec<Message> {
    let mut out = Vec::with_capacity(2 * demos.len() + 2);
    if !description.is_empty() {
        out.push(Message {
            role: "system".into(),
            content: description.into(),
        });
    }
    let rest = plain.strip_prefix(description).unwrap_or(plain);
    out.extend(messages(rest, "", demos, query, multiturn));
    out
}

/// The messages [`api_messages`] serialized (a chat endpoint's request context), read back.
pub fn parse_messages(context: &str) -> Option<Vec<Message>> {
    serde_json::from_str(context).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate {
            source: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        };
        let m = messages(
            "",
            "Classify.\n",
            &[("great", Some("positive"))],
            "dull",
            true,
        );
        assert_eq!(
            t.render(&m).unwrap(),
            "<|im_start|>user\nClassify.\ngreat<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>\n<|im_start|>user\ndull<|im_end|>\n<|im_start|>assistant\n"
        );
        let folded = messages(
            "all of it",
            "d",
            &[("great", Some("positive"))],
            "dull",
            false,
        );
        assert_eq!(
            folded,
            vec![Message {
                role: "user".into(),
                content: "all of it".into()
            }]
        );
        let bad = ChatTemplate {
            source: "{{ raise_exception('no system role') }}".into(),
            ..t
        };
        assert!(
            bad.render(&m)
                .unwrap_err()
                .to_string()
                .contains("no system role")
        );
    }
}
