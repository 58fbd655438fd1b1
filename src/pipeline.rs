//! From a commit to an artifact: export the tree, run the build, pack.
//!
//! Owns the order of the build stages and which packer runs (tar.gz or
//! deb), and nothing else. Invariants: the
//! build runs in a fresh temporary export of the commit (never a working
//! tree, so uncommitted files cannot leak into a release), and the artifact
//! depends only on the commit, its config and the build's output.

use std::path::Path;

use crate::artifact::{self, Artifact, DebInput, PackInput};
use crate::config::{ArtifactFormat, Config};
use crate::source::{Commit, Repo};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    #[error("cannot create a temporary build directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error(
        "a .deb installs into deploy_to, but it is not known for this build: no environment deploys branch `{branch}` and the environments' deploy_to differ; build from an environment's branch"
    )]
    NoDeployTo { branch: String },
}

/// What the build is for; becomes the manifest and the build's environment.
pub struct Target<'a> {
    pub config: &'a Config,
    pub commit: &'a Commit,
    pub branch: &'a str,
    pub release_id: &'a str,
    /// What to pack: normally `config.app.artifact`.
    pub format: ArtifactFormat,
    /// Where the release is deployed; a `.deb` installs its files there.
    pub deploy_to: Option<&'a str>,
    /// Where the build steps run (they are untrusted code).
    pub sandbox: &'a crate::build::Sandbox,
}

/// Builds the artifact for `target` into `out_dir`. `on_line` receives
/// `(step, line)` for every line the build prints.
///
/// # Errors
/// When the export, a build step or packing fails.
pub fn build(
    repo: &Repo,
    target: &Target<'_>,
    out_dir: &Path,
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<Artifact, PipelineError> {
    let work = crate::scratch::dir("build").map_err(PipelineError::TempDir)?;
    repo.export(&target.commit.id, work.path())?;
    let env = vec![
        ("SLIPWAY_APP".to_owned(), target.config.app.name.clone()),
        ("SLIPWAY_COMMIT".to_owned(), target.commit.id.clone()),
        ("SLIPWAY_BRANCH".to_owned(), target.branch.to_owned()),
        ("SLIPWAY_RELEASE".to_owned(), target.release_id.to_owned()),
        (
            "SOURCE_DATE_EPOCH".to_owned(),
            target.commit.time.to_string(),
        ),
    ];
    crate::build::run_steps(
        work.path(),
        &target.config.build.steps,
        target.sandbox,
        &env,
        on_line,
    )?;
    let input = PackInput {
        dir: work.path(),
        exclude: &target.config.build.exclude,
        source_time: target.commit.time,
        app: &target.config.app.name,
        commit: &target.commit.id,
        branch: target.branch,
        release_id: target.release_id,
    };
    let artifact = match target.format {
        ArtifactFormat::TarGz => artifact::pack(&input, out_dir)?,
        ArtifactFormat::Deb => {
            let deb = &target.config.deb;
            let app = &target.config.app.name;
            let deploy_to = target.deploy_to.ok_or_else(|| PipelineError::NoDeployTo {
                branch: target.branch.to_owned(),
            })?;
            let prefix = deb
                .package_prefix
                .clone()
                .unwrap_or_else(|| artifact::default_package_prefix(app));
            let maintainer = deb
                .maintainer
                .clone()
                .unwrap_or_else(|| default_maintainer(app, &target.commit.committer));
            let scripts = deb.scripts.list();
            artifact::pack_deb(
                &input,
                &DebInput {
                    deploy_to,
                    package_prefix: &prefix,
                    maintainer: &maintainer,
                    architecture: &deb.architecture,
                    depends: &deb.depends,
                    conffiles: &deb.conffiles,
                    scripts: &scripts,
                },
                out_dir,
            )?
        }
    };
    Ok(artifact)
}

/// Who a package names as its maintainer when `[deb] maintainer` is unset:
/// the commit's committer, who made this release. A committer without a
/// name becomes `<app> deployers <email>`; lintian wants a name beside the
/// address, and a real address, never `root@localhost`.
fn default_maintainer(app: &str, committer: &str) -> String {
    match committer.split_once('<') {
        Some((name, email)) if name.trim().is_empty() => {
            format!("{app} deployers <{}", email.trim())
        }
        _ => committer.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_maintainer_is_the_committer() {
        assert_eq!(
            super::default_maintainer("shop", "Ada Lovelace <ada@example.org>"),
            "Ada Lovelace <ada@example.org>"
        );
        assert_eq!(
            super::default_maintainer("shop", " <ci@example.org>"),
            "shop deployers <ci@example.org>"
        );
    }
}
