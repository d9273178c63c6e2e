//! [`error_chain`]: an error and its sources as one line, for the edges that show errors to people.

/// An error and its sources as one line, `outer: inner: innermost`, for the edges that show errors to people
/// (gRPC status messages, log lines, a binary's last words). A source whose text the outer message already
/// contains is not repeated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let line = err.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: inner")]
    struct Middle(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn sources_are_joined_without_repeating_themselves() {
        assert_eq!(error_chain(&Outer(Middle(Inner))), "outer: middle: inner");
        assert_eq!(error_chain(&Inner), "inner");
    }
}
