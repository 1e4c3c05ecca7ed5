//! Library errors as the CLI prints them.

/// An error with all its causes, as the CLI prints it (`{:#}`): library errors keep their
/// causes as sources, out of their own message.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    nydus_image::error::Chain(e).to_string()
}
