<#
.SYNOPSIS
Build Butterfly for Windows: the program folder (butterfly.exe, the console command, and
butterfly-app.exe, the windowed tray launcher) and an Inno Setup installer.

.DESCRIPTION
  pwsh installers/windows/build.ps1 [-Dist DIR] [-Work DIR] [-SkipInstaller]

  -Dist DIR       outputs (default $env:BUTTERFLY_DIST_DIR or dist\):
                    butterfly\                                  the program folder
                    butterfly-<version>-windows-x64-setup.exe   the installer
  -Work DIR       intermediate files (default $env:BUTTERFLY_WORK_DIR or build\)
  -SkipInstaller  only the program folder

PYTHON (default .venv\Scripts\python.exe, else python) must have the project, PyInstaller and
Pillow. The installer needs Inno Setup 6: ISCC.exe from $env:ISCC, PATH, or its default folder.

Authenticode signing happens only when WINDOWS_SIGN_PFX (a .pfx file) is set, with
WINDOWS_SIGN_PASSWORD and optionally WINDOWS_SIGN_TIMESTAMP_URL; it needs signtool.exe
(Windows SDK) on PATH or in $env:SIGNTOOL. Unset, nothing is signed.
#>
param(
    [string]$Dist = $(if ($env:BUTTERFLY_DIST_DIR) { $env:BUTTERFLY_DIST_DIR } else { "" }),
    [string]$Work = $(if ($env:BUTTERFLY_WORK_DIR) { $env:BUTTERFLY_WORK_DIR } else { "" }),
    [switch]$SkipInstaller
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$Root = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
if (-not $Dist) { $Dist = Join-Path $Root "dist" }
if (-not $Work) { $Work = Join-Path $Root "build" }
New-Item -ItemType Directory -Force -Path $Dist, $Work | Out-Null
$Dist = (Resolve-Path $Dist).Path
$Work = (Resolve-Path $Work).Path

$Python = $env:PYTHON
if (-not $Python) {
    $venv = Join-Path $Root ".venv\Scripts\python.exe"
    $Python = if (Test-Path $venv) { $venv } else { "python" }
}
$Version = (Select-String -Path (Join-Path $Root "cli\main.py") -Pattern '^VERSION = "(.+)"$').Matches[0].Groups[1].Value
$Started = Get-Date

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe failed with exit code $LASTEXITCODE" }
}

function Invoke-Sign([string[]]$Files) {
    if (-not $env:WINDOWS_SIGN_PFX) { return }
    $signtool = if ($env:SIGNTOOL) { $env:SIGNTOOL } else { "signtool.exe" }
    $timestamp = if ($env:WINDOWS_SIGN_TIMESTAMP_URL) { $env:WINDOWS_SIGN_TIMESTAMP_URL } else { "http://timestamp.digicert.com" }
    Invoke-Checked $signtool (@("sign", "/fd", "sha256", "/td", "sha256", "/tr", $timestamp,
        "/f", $env:WINDOWS_SIGN_PFX, "/p", $env:WINDOWS_SIGN_PASSWORD) + $Files)
}

Write-Host "== icons"
$Icons = Join-Path $Work "icons"
Invoke-Checked $Python @((Join-Path $Root "installers\make_icons.py"), $Icons)

Write-Host "== PyInstaller (onedir)"
$env:BUTTERFLY_ICON_DIR = $Icons
Invoke-Checked $Python @("-m", "PyInstaller", (Join-Path $Root "installers\butterfly.spec"), "--noconfirm",
    "--log-level", "WARN", "--distpath", (Join-Path $Work "pyinstaller-dist"), "--workpath", (Join-Path $Work "pyinstaller"))
$Program = Join-Path $Dist "butterfly"
if (Test-Path $Program) { Remove-Item -Recurse -Force $Program }
Move-Item (Join-Path $Work "pyinstaller-dist\butterfly") $Program
Invoke-Checked (Join-Path $Program "butterfly.exe") @("--version")
if ($env:WINDOWS_SIGN_PFX) {
    Write-Host "== signing the executables"
    Invoke-Sign @((Join-Path $Program "butterfly.exe"), (Join-Path $Program "butterfly-app.exe"))
} else {
    Write-Host "== WINDOWS_SIGN_PFX is unset: not signing"
}

if (-not $SkipInstaller) {
    $iscc = $env:ISCC
    if (-not $iscc) {
        $found = Get-Command "ISCC.exe" -ErrorAction SilentlyContinue
        $iscc = if ($found) { $found.Source } else { Join-Path ${env:ProgramFiles(x86)} "Inno Setup 6\ISCC.exe" }
    }
    if (-not (Test-Path $iscc)) { throw "Inno Setup 6 is needed for the installer (ISCC.exe not found); install it or pass -SkipInstaller" }
    Write-Host "== installer (Inno Setup)"
    Invoke-Checked $iscc @("/Qp", "/DAppVersion=$Version", "/DSourceDir=$Program", "/DIconFile=$(Join-Path $Icons 'butterfly.ico')",
        "/DOutputDir=$Dist", (Join-Path $Root "installers\windows\butterfly.iss"))
    $Setup = Join-Path $Dist "butterfly-$Version-windows-x64-setup.exe"
    Invoke-Sign @($Setup)
}

$Elapsed = [int]((Get-Date) - $Started).TotalSeconds
$Archives = @()
if (-not $SkipInstaller) { $Archives = @("--archive", $Setup) }
Invoke-Checked $Python (@((Join-Path $Root "installers\bundle_report.py"), $Program, "--build-seconds", "$Elapsed",
    "--out", (Join-Path $Dist "butterfly-$Version-windows-x64.report.json")) + $Archives)
Write-Host "== done in ${Elapsed}s"
