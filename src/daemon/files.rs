//! File messages: `repoFileContent`.

use super::session::{Ctx, Step};
use crate::protocol::daemon::RepoFileContent;

pub async fn repo_file_content(_ctx: &Ctx<'_>, _m: RepoFileContent) -> Step {
    Step::Nothing
}
