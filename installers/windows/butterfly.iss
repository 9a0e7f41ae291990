; Inno Setup 6 script for Butterfly: a per-user install (no administrator rights) of the
; program folder PyInstaller builds, with a Start-menu entry, an optional start at sign-in,
; and an uninstaller that removes the sign-in entry and, if the user agrees, the settings,
; keys and cached models.
;
; Built by installers/windows/build.ps1, which passes:
;   /DAppVersion=0.1.0  /DSourceDir=<dist\butterfly>  /DIconFile=<butterfly.ico>  /DOutputDir=<dist>
; Silent uninstall keeps the user's data unless given /PURGE=1.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\..\dist\butterfly"
#endif
#ifndef IconFile
  #define IconFile "..\..\build\icons\butterfly.ico"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif

[Setup]
AppId={{BD2F269C-344F-453E-A7A9-DA3D58D685B7}
AppName=Butterfly
AppVersion={#AppVersion}
AppVerName=Butterfly {#AppVersion}
AppPublisher=Butterfly
VersionInfoVersion={#AppVersion}
DefaultDirName={autopf}\Butterfly
DefaultGroupName=Butterfly
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename=butterfly-{#AppVersion}-windows-x64-setup
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\butterfly-app.exe
UninstallDisplayName=Butterfly
Compression=lzma2
SolidCompression=yes
LZMANumBlockThreads=4
WizardStyle=modern
CloseApplications=yes
RestartApplications=no

[Tasks]
Name: "startatlogin"; Description: "Start Butterfly when I sign in to Windows"; GroupDescription: "Start-up:"; Flags: unchecked

[InstallDelete]
; An update replaces the bundled libraries wholesale, so none from an older version linger.
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\Butterfly"; Filename: "{app}\butterfly-app.exe"; WorkingDir: "{app}"; Comment: "Lend this computer to a language-model pool, or host one"
Name: "{group}\Uninstall Butterfly"; Filename: "{uninstallexe}"

[Registry]
; The same value the app writes when start at sign-in is turned on in its settings.
Root: HKCU; Subkey: "Software\Microsoft\Windows\CurrentVersion\Run"; ValueType: string; ValueName: "Butterfly"; \
  ValueData: """{app}\butterfly-app.exe"" -m cli app"; Flags: uninsdeletevalue; Tasks: startatlogin

[Run]
Filename: "{app}\butterfly-app.exe"; Description: "Start Butterfly now"; Flags: nowait postinstall skipifsilent

[UninstallRun]
; The tray app and its compute processes hold files in {app}; stop them first.
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM butterfly-app.exe"; Flags: runhidden; RunOnceId: "StopButterflyApp"
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM butterfly.exe"; Flags: runhidden; RunOnceId: "StopButterfly"

[UninstallDelete]
Type: filesandordirs; Name: "{app}"

[Code]
const
  RunKey = 'Software\Microsoft\Windows\CurrentVersion\Run';
  RunValue = 'Butterfly';

var
  RemoveUserData: Boolean;

{ Whether to remove settings, keys and models: asked, or /PURGE=1 when silent. }
function AskRemoveUserData(): Boolean;
begin
  if ExpandConstant('{param:PURGE|0}') = '1' then
    Result := True
  else if UninstallSilent then
    Result := False
  else
    Result := MsgBox('Also remove your Butterfly settings, keys and downloaded models?' + #13#10#13#10 +
      ExpandConstant('{localappdata}\butterfly') + #13#10#13#10 +
      'Keep them to rejoin your pools as the same computer if you install Butterfly again.',
      mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usUninstall then
  begin
    RemoveUserData := AskRemoveUserData();
    { The sign-in entry would start a program that is gone, whoever turned it on. }
    RegDeleteValue(HKEY_CURRENT_USER, RunKey, RunValue);
  end;
  if (CurUninstallStep = usPostUninstall) and RemoveUserData then
    DelTree(ExpandConstant('{localappdata}\butterfly'), True, True, True);
end;
